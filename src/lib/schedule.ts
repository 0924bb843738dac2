/**
 * The schedule slot a timer invocation belongs to: the latest occurrence of the NCRONTAB expression
 * at or before a time. Two invocations for the same slot (a duplicate delivery, a past-due catch-up,
 * two instances) compute the same slot, and the catalog lets only one of them claim it.
 */

const FIELDS = [
  { name: "second", min: 0, max: 59 },
  { name: "minute", min: 0, max: 59 },
  { name: "hour", min: 0, max: 23 },
  { name: "day", min: 1, max: 31 },
  {
    name: "month",
    min: 1,
    max: 12,
    names: ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
  },
  { name: "day of week", min: 0, max: 6, names: ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"] },
] as const;

/** How far back a slot is looked for: the rarest schedule this app expects is weekly. */
const SEARCH_MINUTES = 8 * 24 * 60;

export interface Schedule {
  readonly expression: string;
  /** Allowed values per field: second, minute, hour, day, month, day of week. */
  readonly allowed: readonly ReadonlySet<number>[];
}

/**
 * Parses six-field NCRONTAB (second minute hour day month day-of-week), UTC, with `*`, numbers,
 * names (JAN, MON), ranges, lists and steps.
 * @throws Error naming the field and value that are not understood.
 */
export function parseSchedule(expression: string): Schedule {
  const parts = expression.trim().split(/\s+/);
  if (parts.length !== 6) throw new Error(`"${expression}" is not a six-field NCRONTAB expression`);
  return { expression, allowed: parts.map((part, i) => parseField(part, FIELDS[i]!, expression)) };
}

function parseField(text: string, field: (typeof FIELDS)[number], expression: string): Set<number> {
  const values = new Set<number>();
  const fail = () => new Error(`"${expression}": the ${field.name} field "${text}" is not understood`);
  const value = (token: string): number => {
    const index = "names" in field ? (field.names as readonly string[]).indexOf(token.toUpperCase()) : -1;
    const n = index >= 0 ? index + field.min : /^\d+$/.test(token) ? Number(token) : NaN;
    // Day of week 7 is Sunday too, as in cron.
    const normalised = field.name === "day of week" && n === 7 ? 0 : n;
    if (!Number.isInteger(normalised) || normalised < field.min || normalised > field.max) throw fail();
    return normalised;
  };
  for (const item of text.split(",")) {
    const [range, stepText] = item.split("/") as [string, string | undefined];
    const step = stepText === undefined ? 1 : /^\d+$/.test(stepText) && Number(stepText) > 0 ? Number(stepText) : NaN;
    if (Number.isNaN(step) || range === "") throw fail();
    let from: number = field.min;
    let to: number = field.max;
    if (range !== "*") {
      const [a, b] = range.split("-") as [string, string | undefined];
      from = value(a);
      to = b === undefined ? (stepText === undefined ? from : field.max) : value(b);
      if (to < from) throw fail();
    }
    for (let v = from; v <= to; v += step) values.add(v);
  }
  return values;
}

/** The latest time at or before `at` (whole seconds, UTC) that the schedule fires; undefined if none within 8 days. */
export function latestOccurrence(schedule: Schedule, at: Date): Date | undefined {
  const [seconds, minutes, hours, days, months, weekdays] = schedule.allowed as [
    ReadonlySet<number>,
    ReadonlySet<number>,
    ReadonlySet<number>,
    ReadonlySet<number>,
    ReadonlySet<number>,
    ReadonlySet<number>,
  ];
  const startMinute = Math.floor(at.getTime() / 60_000) * 60_000;
  for (let i = 0; i <= SEARCH_MINUTES; i++) {
    const minute = new Date(startMinute - i * 60_000);
    if (
      !minutes.has(minute.getUTCMinutes()) ||
      !hours.has(minute.getUTCHours()) ||
      !days.has(minute.getUTCDate()) ||
      !months.has(minute.getUTCMonth() + 1) ||
      !weekdays.has(minute.getUTCDay())
    )
      continue;
    const last = i === 0 ? at.getUTCSeconds() : 59;
    for (let s = last; s >= 0; s--) {
      if (seconds.has(s)) return new Date(minute.getTime() + s * 1000);
    }
  }
  return undefined;
}
