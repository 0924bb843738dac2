/**
 * The input rules the HTTP API and the CLI share, called directly: each bound, each field's own
 * error (field, title, message with the surface's label), and the echo of bad input kept short.
 */
import { describe, expect, it } from "vitest";
import { RECORD_STATUSES, VERIFICATIONS } from "../../src/lib/catalog.js";
import {
  checkKeyName,
  checkRecordId,
  describe as describeValue,
  InvalidInput,
  LIST_TOP,
  MAX_CONTINUATION_TOKEN_LENGTH,
  parseListQuery,
  truncate,
  type Field,
} from "../../src/lib/validation.js";

const label = (field: Field) => `--${field}`;

function refusal(run: () => unknown): InvalidInput {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidInput);
    return error as InvalidInput;
  }
  throw new Error("accepted what it should refuse");
}

describe("parseListQuery", () => {
  it("defaults to the first 25 records of everything, with no filter keys at all", () => {
    expect(parseListQuery({}, label)).toStrictEqual({ top: 25 });
    expect(LIST_TOP).toEqual({ min: 1, max: 100, default: 25 });
  });

  it("passes each filter through under the catalog's name for it", () => {
    expect(
      parseListQuery({ hsm: "contoso-1", status: "Failed", top: "7", continuationToken: "abc" }, label),
    ).toStrictEqual({ top: 7, hsmName: "contoso-1", status: "Failed", continuationToken: "abc" });
    expect(parseListQuery({ hsm: "contoso" }, label)).toStrictEqual({ top: 25, hsmName: "contoso" });
    expect(parseListQuery({ status: "Running" }, label)).toStrictEqual({ top: 25, status: "Running" });
    expect(parseListQuery({ continuationToken: "" }, label)).toStrictEqual({ top: 25, continuationToken: "" });
  });

  it("accepts every record status and nothing else", () => {
    for (const status of RECORD_STATUSES) expect(parseListQuery({ status }, label).status).toBe(status);
    const error = refusal(() => parseListQuery({ status: "running" }, label));
    expect(error).toMatchObject({ field: "status", title: "Invalid status", name: "InvalidInput" });
    expect(error.message).toBe(`--status "running" is not one of ${RECORD_STATUSES.join(", ")}`);
  });

  it("accepts every verification and nothing else", () => {
    for (const verification of VERIFICATIONS)
      expect(parseListQuery({ verification }, label).verification).toBe(verification);
    const error = refusal(() => parseListQuery({ verification: "passed" }, label));
    expect(error).toMatchObject({ field: "verification", title: "Invalid verification", name: "InvalidInput" });
    expect(error.message).toBe(`--verification "passed" is not one of ${VERIFICATIONS.join(", ")}`);
  });

  it("accepts an HSM name of 1 to 63 letters, digits and hyphens", () => {
    expect(parseListQuery({ hsm: "a" }, label).hsmName).toBe("a");
    expect(parseListQuery({ hsm: "A".repeat(63) }, label).hsmName).toBe("A".repeat(63));
    for (const hsm of ["", "A".repeat(64), "bad_name", "x.y", " contoso", "contoso "]) {
      const error = refusal(() => parseListQuery({ hsm }, label));
      expect(error).toMatchObject({ field: "hsm", title: "Invalid hsm" });
      expect(error.message).toBe(`--hsm "${hsm}" is not an HSM name`);
    }
  });

  it("accepts top from 1 to 100 exactly", () => {
    expect(parseListQuery({ top: "1" }, label).top).toBe(1);
    expect(parseListQuery({ top: "100" }, label).top).toBe(100);
    expect(parseListQuery({ top: "007" }, label).top).toBe(7);
    for (const top of ["0", "101", "999", "1000", "-1", "1.5", "1e2", " 5", "5 ", "", "ten"]) {
      const error = refusal(() => parseListQuery({ top }, label));
      expect(error).toMatchObject({ field: "top", title: "Invalid top" });
      expect(error.message).toBe(`--top must be a whole number from 1 to 100, not "${top}"`);
    }
  });

  it("accepts a continuation token up to 1024 characters", () => {
    const longest = "t".repeat(MAX_CONTINUATION_TOKEN_LENGTH);
    expect(MAX_CONTINUATION_TOKEN_LENGTH).toBe(1024);
    expect(parseListQuery({ continuationToken: longest }, label).continuationToken).toBe(longest);
    const error = refusal(() => parseListQuery({ continuationToken: `${longest}t` }, label));
    expect(error).toMatchObject({ field: "continuationToken", title: "Invalid continuation token" });
    expect(error.message).toBe("--continuationToken is longer than any token this listing returns");
  });

  it("echoes at most 80 characters of bad input", () => {
    const long = `${"x".repeat(80)}_tail`;
    expect(refusal(() => parseListQuery({ hsm: long }, label)).message).toBe(
      `--hsm "${"x".repeat(80)}…" is not an HSM name`,
    );
    expect(refusal(() => parseListQuery({ status: long }, label)).message).toContain(`"${"x".repeat(80)}…"`);
    expect(refusal(() => parseListQuery({ top: `1${"0".repeat(90)}` }, label)).message).toBe(
      `--top must be a whole number from 1 to 100, not "1${"0".repeat(79)}…"`,
    );
  });
});

describe("checkKeyName", () => {
  it("returns a key name of 1 to 127 letters, digits and hyphens", () => {
    expect(checkKeyName("k", label)).toBe("k");
    expect(checkKeyName("My-Key-01", label)).toBe("My-Key-01");
    expect(checkKeyName("k".repeat(127), label)).toBe("k".repeat(127));
  });

  it.each([
    ["", '--keyName "" is not a key name (1-127 letters, digits and hyphens)'],
    ["k".repeat(128), `--keyName "${"k".repeat(80)}…" is not a key name (1-127 letters, digits and hyphens)`],
    ["key/../x", '--keyName "key/../x" is not a key name (1-127 letters, digits and hyphens)'],
    ["key name", '--keyName "key name" is not a key name (1-127 letters, digits and hyphens)'],
    ["-\n", '--keyName "-\n" is not a key name (1-127 letters, digits and hyphens)'],
    [42, "--keyName of type number is not a key name (1-127 letters, digits and hyphens)"],
    [null, "--keyName of type null is not a key name (1-127 letters, digits and hyphens)"],
    [["k"], "--keyName of type array is not a key name (1-127 letters, digits and hyphens)"],
    [{ name: "k" }, "--keyName of type object is not a key name (1-127 letters, digits and hyphens)"],
    [undefined, "--keyName of type undefined is not a key name (1-127 letters, digits and hyphens)"],
  ])("refuses %j", (value, message) => {
    const error = refusal(() => checkKeyName(value, label));
    expect(error).toMatchObject({ field: "keyName", title: "Invalid key name", message });
  });
});

describe("checkRecordId", () => {
  it("returns a record id: 13 digits, a hyphen, 8 lowercase hex digits", () => {
    expect(checkRecordId("8234567890123-0a1b2c3d", "backup")).toBe("8234567890123-0a1b2c3d");
  });

  it.each([
    "823456789012-0a1b2c3d",
    "8234567890123-0A1B2C3D",
    "8234567890123-0a1b2c3d0",
    "x8234567890123-0a1b2c3d",
    "",
  ])("refuses %j", (id) => {
    const backup = refusal(() => checkRecordId(id, "backup"));
    expect(backup).toMatchObject({
      field: "id",
      title: "Invalid backup id",
      message: `"${id}" is not a backup id (13 digits, a hyphen, 8 hex digits)`,
    });
    expect(refusal(() => checkRecordId(id, "restore"))).toMatchObject({
      title: "Invalid restore id",
      message: `"${id}" is not a restore id (13 digits, a hyphen, 8 hex digits)`,
    });
  });
});

describe("describe and truncate", () => {
  it("quotes strings and names the type of anything else", () => {
    expect(describeValue("abc")).toBe('"abc"');
    expect(describeValue(true)).toBe("of type boolean");
    expect(describeValue([])).toBe("of type array");
  });

  it("cuts at 80 characters and marks the cut", () => {
    expect(truncate("y".repeat(80))).toBe("y".repeat(80));
    expect(truncate("y".repeat(81))).toBe(`${"y".repeat(80)}…`);
  });
});
