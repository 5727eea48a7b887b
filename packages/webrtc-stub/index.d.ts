/** Thrown when anything tries to use WebRTC in a narrace process. */
export declare class WebRTCUnavailableError extends Error {
  name: 'WebRTCUnavailableError'
  code: 'ERR_WEBRTC_UNAVAILABLE'
}

/** Each class throws WebRTCUnavailableError when constructed. */
export declare class RTCPeerConnection {
  constructor(...args: unknown[])
}
export declare class RTCSessionDescription {
  constructor(...args: unknown[])
}
export declare class RTCIceCandidate {
  constructor(...args: unknown[])
}
export declare class RTCIceTransport {
  constructor(...args: unknown[])
}
export declare class RTCDataChannel {
  constructor(...args: unknown[])
}
export declare class RTCSctpTransport {
  constructor(...args: unknown[])
}
export declare class RTCDtlsTransport {
  constructor(...args: unknown[])
}
export declare class RTCCertificate {
  constructor(...args: unknown[])
}
export declare class RTCError {
  constructor(...args: unknown[])
}
export declare class RTCDataChannelEvent {
  constructor(...args: unknown[])
}
export declare class RTCPeerConnectionIceEvent {
  constructor(...args: unknown[])
}
export declare class RTCPeerConnectionIceErrorEvent {
  constructor(...args: unknown[])
}
export declare class RTCTrackEvent {
  constructor(...args: unknown[])
}
export declare class RTCRtpSender {
  constructor(...args: unknown[])
}
export declare class RTCRtpReceiver {
  constructor(...args: unknown[])
}
export declare class RTCRtpTransceiver {
  constructor(...args: unknown[])
}
export declare class MediaStream {
  constructor(...args: unknown[])
}
export declare class MediaStreamTrack {
  constructor(...args: unknown[])
}
export declare class MediaStreamTrackEvent {
  constructor(...args: unknown[])
}

declare const webrtc: {
  RTCPeerConnection: typeof RTCPeerConnection
  RTCSessionDescription: typeof RTCSessionDescription
  RTCIceCandidate: typeof RTCIceCandidate
  RTCIceTransport: typeof RTCIceTransport
  RTCDataChannel: typeof RTCDataChannel
  RTCSctpTransport: typeof RTCSctpTransport
  RTCDtlsTransport: typeof RTCDtlsTransport
  RTCCertificate: typeof RTCCertificate
  RTCError: typeof RTCError
  RTCDataChannelEvent: typeof RTCDataChannelEvent
  RTCPeerConnectionIceEvent: typeof RTCPeerConnectionIceEvent
  RTCPeerConnectionIceErrorEvent: typeof RTCPeerConnectionIceErrorEvent
  RTCTrackEvent: typeof RTCTrackEvent
  RTCRtpSender: typeof RTCRtpSender
  RTCRtpReceiver: typeof RTCRtpReceiver
  RTCRtpTransceiver: typeof RTCRtpTransceiver
  MediaStream: typeof MediaStream
  MediaStreamTrack: typeof MediaStreamTrack
  MediaStreamTrackEvent: typeof MediaStreamTrackEvent
}
export default webrtc
