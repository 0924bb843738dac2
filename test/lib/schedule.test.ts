import { describe, expect, it } from "vitest";
import { latestOccurrence, parseSchedule } from "../../src/lib/schedule.js";

const at = (iso: string) => new Date(iso);

describe("schedule slots (NCRONTAB, UTC)", () => {
  it("finds the latest occurrence at or before a time", () => {
    const nightly = parseSchedule("0 0 2 * * *");
    expect(latestOccurrence(nightly, at("2026-12-01T02:00:00Z"))).toEqual(at("2026-12-01T02:00:00Z"));
    expect(latestOccurrence(nightly, at("2026-12-01T02:00:07.500Z"))).toEqual(at("2026-12-01T02:00:00Z"));
    expect(latestOccurrence(nightly, at("2026-12-01T01:59:59Z"))).toEqual(at("2026-11-30T02:00:00Z"));
    // A catch-up days after an outage belongs to the latest slot only: one backup, not one per missed night.
    expect(latestOccurrence(nightly, at("2026-12-04T09:13:00Z"))).toEqual(at("2026-12-04T02:00:00Z"));
  });

  it("reads steps, ranges, lists and names", () => {
    expect(latestOccurrence(parseSchedule("0 */15 * * * *"), at("2026-12-01T10:44:59Z"))).toEqual(
      at("2026-12-01T10:30:00Z"),
    );
    expect(latestOccurrence(parseSchedule("30 5 1-3 * * MON"), at("2026-12-01T12:00:00Z"))).toEqual(
      at("2026-11-30T03:05:30Z"),
    );
    expect(latestOccurrence(parseSchedule("0 0 2 * * 1,3,5"), at("2026-12-04T01:00:00Z"))).toEqual(
      at("2026-12-02T02:00:00Z"),
    );
    expect(latestOccurrence(parseSchedule("0 0 0 1 JAN *"), at("2026-12-01T00:00:00Z"))).toBeUndefined();
    expect(latestOccurrence(parseSchedule("0 0 0 * * 7"), at("2026-12-01T00:00:00Z"))).toEqual(
      at("2026-11-29T00:00:00Z"),
    );
  });

  it("names the field it does not understand", () => {
    expect(() => parseSchedule("0 0 2 * *")).toThrow(/six-field/);
    expect(() => parseSchedule("0 61 2 * * *")).toThrow(/the minute field "61"/);
    expect(() => parseSchedule("0 0 2 * * FUNDAY")).toThrow(/the day of week field "FUNDAY"/);
    expect(() => parseSchedule("0 0 5-2 * * *")).toThrow(/the hour field "5-2"/);
    expect(() => parseSchedule("*/0 0 2 * * *")).toThrow(/the second field "\*\/0"/);
  });
});
