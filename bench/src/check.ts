import type { ScenarioResult } from './results.js'

/** A bound on one ratio, by its id. */
export interface Floor {
  min?: number
  max?: number
  /** Where the bound comes from. */
  source?: string
}

/** The outcome for one floor. */
export interface Verdict {
  id: string
  value: number | null
  floor: Floor
  ok: boolean
  /** Why it failed; empty when ok. */
  why: string
}

/** Holds every ratio named in `floors` against its bound. A ratio that was not measured fails. */
export function checkFloors(results: ScenarioResult[], floors: Record<string, Floor>): Verdict[] {
  const ratios = new Map(results.flatMap((r) => r.ratios.map((ratio) => [ratio.id, ratio.value] as const)))
  return Object.entries(floors).map(([id, floor]) => {
    const value = ratios.get(id)
    if (value === undefined || value === null) return { id, value: null, floor, ok: false, why: 'not measured' }
    if (floor.min !== undefined && value < floor.min) return { id, value, floor, ok: false, why: `${value} < ${floor.min}` }
    if (floor.max !== undefined && value > floor.max) return { id, value, floor, ok: false, why: `${value} > ${floor.max}` }
    return { id, value, floor, ok: true, why: '' }
  })
}

/** `≥ 0.9`, `≤ 0.1`, or both. */
export function describeFloor(floor: Floor): string {
  return [floor.min !== undefined ? `≥ ${floor.min}` : '', floor.max !== undefined ? `≤ ${floor.max}` : '']
    .filter(Boolean)
    .join(', ')
}
