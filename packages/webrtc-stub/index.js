// Stands in for `webrtc-polyfill` (installed through a pnpm override) so that webtorrent and
// bittorrent-tracker load without `node-datachannel`, whose install script downloads a native binary.
// narrace's Node peers speak TCP only: no WebSocket trackers, so simple-peer never builds a connection.

/** Thrown when anything tries to use WebRTC in a narrace process. */
export class WebRTCUnavailableError extends Error {
  name = 'WebRTCUnavailableError'
  code = 'ERR_WEBRTC_UNAVAILABLE'
}

function unavailable(name) {
  return class {
    constructor() {
      throw new WebRTCUnavailableError(
        `${name} is not available: narrace replaces webrtc-polyfill with a TCP-only stub; ` +
          'use TCP peers and http/udp trackers only (no ws:// or wss:// announce URLs)',
      )
    }
  }
}

export const RTCPeerConnection = unavailable('RTCPeerConnection')
export const RTCSessionDescription = unavailable('RTCSessionDescription')
export const RTCIceCandidate = unavailable('RTCIceCandidate')
export const RTCIceTransport = unavailable('RTCIceTransport')
export const RTCDataChannel = unavailable('RTCDataChannel')
export const RTCSctpTransport = unavailable('RTCSctpTransport')
export const RTCDtlsTransport = unavailable('RTCDtlsTransport')
export const RTCCertificate = unavailable('RTCCertificate')
export const RTCError = unavailable('RTCError')
export const RTCDataChannelEvent = unavailable('RTCDataChannelEvent')
export const RTCPeerConnectionIceEvent = unavailable('RTCPeerConnectionIceEvent')
export const RTCPeerConnectionIceErrorEvent = unavailable('RTCPeerConnectionIceErrorEvent')
export const RTCTrackEvent = unavailable('RTCTrackEvent')
export const RTCRtpSender = unavailable('RTCRtpSender')
export const RTCRtpReceiver = unavailable('RTCRtpReceiver')
export const RTCRtpTransceiver = unavailable('RTCRtpTransceiver')
export const MediaStream = unavailable('MediaStream')
export const MediaStreamTrack = unavailable('MediaStreamTrack')
export const MediaStreamTrackEvent = unavailable('MediaStreamTrackEvent')

export default {
  RTCPeerConnection,
  RTCSessionDescription,
  RTCIceCandidate,
  RTCIceTransport,
  RTCDataChannel,
  RTCSctpTransport,
  RTCDtlsTransport,
  RTCCertificate,
  RTCError,
  RTCDataChannelEvent,
  RTCPeerConnectionIceEvent,
  RTCPeerConnectionIceErrorEvent,
  RTCTrackEvent,
  RTCRtpSender,
  RTCRtpReceiver,
  RTCRtpTransceiver,
  MediaStream,
  MediaStreamTrack,
  MediaStreamTrackEvent,
}
