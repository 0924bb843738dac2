/**
 * The redactor with real secrets passed through it, one shape at a time: a SAS as storage builds it,
 * a bearer token, a JWT, an account key and connection string, a user-delegation key, and the values
 * the app minted itself. Each case pins the whole output, so a pattern that redacts too little (one
 * character of a signature), too much (the text around it) or in the wrong shape fails here.
 */
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { AggregateAuthenticationError, AuthenticationRequiredError, CredentialUnavailableError } from "@azure/identity";
import { redactSecrets, rememberSecret, toSafeError } from "../../src/lib/redact.js";
import { AZURITE_KEY } from "../../tools/azurite.js";

/** A value nothing else in the suite remembers, with characters every encoding changes. */
function fresh(label: string): string {
  return `${label}/${randomBytes(6).toString("hex")}+Zq=`;
}

describe("redactSecrets: SAS signatures", () => {
  it.each([
    ["sig=abcDEF123%2Bxyz%3D", "sig=<redacted>"],
    ["SIG=abcDEF", "SIG=<redacted>"],
    ["signature=abcDEF", "signature=<redacted>"],
    ["sig = abcDEF", "sig = <redacted>"],
    ["sig%3DabcDEF", "sig%3D<redacted>"],
    ["sig%253DabcDEF", "sig%253D<redacted>"],
    ["sig%25253DabcDEF", "sig%25253D<redacted>"],
    [`{"sig":"abcDEF"}`, `{"sig":"<redacted>"}`],
    [`{"signature": "abcDEF"}`, `{"signature": "<redacted>"}`],
    ["sig: 'abcDEF'", "sig: '<redacted>'"],
  ])("redacts the whole value of %s", (input, output) => {
    expect(redactSecrets(`before ${input} after`)).toBe(`before ${output} after`);
  });

  it.each(["&", " ", '"', "'", "<", ">", ",", ";", ")", "]", "}", "\t"])("stops the value at %j", (end) => {
    expect(redactSecrets(`x sig=abcDEF${end}rest`)).toBe(`x sig=<redacted>${end}rest`);
  });

  it("redacts every signature in a text, not only the first", () => {
    expect(redactSecrets("sig=one1 and sig=two2")).toBe("sig=<redacted> and sig=<redacted>");
  });

  it("leaves words that only end in sig alone", () => {
    expect(redactSecrets("config mysig=abcDEF and designature=xyz")).toBe("config mysig=abcDEF and designature=xyz");
  });
});

describe("redactSecrets: SAS query strings", () => {
  const sas =
    "sv=2025-11-05&ss=b&srt=co&sp=rwdlac&se=2026-12-01T02%3A00%3A00Z&st=2026-12-01T00%3A00%3A00Z&spr=https&sig=Zm9vYmFy%2BYmF6%3D";

  it("redacts the whole query of a SAS URL, up to the next space", () => {
    expect(redactSecrets(`GET https://acct.blob.core.windows.net/c/f?${sas} failed`)).toBe(
      "GET https://acct.blob.core.windows.net/c/f?<redacted-sas> failed",
    );
  });

  it.each([
    "sig=a",
    "se=2026",
    "sv=2025-11-05",
    "sp=rl",
    "skoid=0000",
    "sktid=1111",
    "SV=2025",
    "sv%3D2025",
    "sv%253D2025",
  ])("recognises a query carrying %s", (param) => {
    expect(redactSecrets(`url https://h/c?comp=list&${param}&x=1 end`)).toBe("url https://h/c?<redacted-sas> end");
  });

  it.each(['"', "'", "<", ">", "\n"])("ends the query at %j", (end) => {
    expect(redactSecrets(`u=https://h/c?sv=2025&sp=r${end}tail`)).toBe(`u=https://h/c?<redacted-sas>${end}tail`);
  });

  it("leaves a query without SAS parameters alone, even when a name ends in one", () => {
    const text = "https://h/c?restype=container&comp=list&response=ok&xsp=1";
    expect(redactSecrets(text)).toBe(text);
  });
});

describe("redactSecrets: tokens and keys", () => {
  it.each([
    ["Authorization: Bearer abc.DEF-ghi_jkl~mno+pqr/stu%2F0==", "Authorization: Bearer <redacted>"],
    ["bearer abc123", "Bearer <redacted>"],
    ["Bearer%20abc123", "Bearer <redacted>"],
    ["Bearer%2520abc123", "Bearer <redacted>"],
    ["Bearer \t abc123", "Bearer <redacted>"],
  ])("redacts a bearer token: %s", (input, output) => {
    expect(redactSecrets(`${input} end`)).toBe(`${output} end`);
  });

  it("leaves a word that only ends in Bearer alone", () => {
    expect(redactSecrets("TokenBearer abc123")).toBe("TokenBearer abc123");
  });

  it("redacts a JWT wherever it stands, signature included", () => {
    const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl_-x";
    expect(redactSecrets(`{"access_token":"${jwt}","x":1}`)).toBe(`{"access_token":"<redacted-jwt>","x":1}`);
    expect(redactSecrets(`token ${jwt} end`)).toBe("token <redacted-jwt> end");
    // An unsigned one (alg none) ends in a dot.
    expect(redactSecrets("t eyJhbGciOi.eyJzdWIi. end")).toBe("t <redacted-jwt> end");
  });

  it("does not take short dotted words for a JWT", () => {
    expect(redactSecrets("eyJabc.defgh.x eyJabcd.efg.x")).toBe("eyJabc.defgh.x eyJabcd.efg.x");
    expect(redactSecrets("EYJhbGciOi.eyJzdWIi.x")).toBe("EYJhbGciOi.eyJzdWIi.x");
  });

  it.each([
    [
      "AccountName=a;AccountKey=c2VjcmV0+/=;EndpointSuffix=core.windows.net",
      "AccountName=a;AccountKey=<redacted>;EndpointSuffix=core.windows.net",
    ],
    ["accountkey = c2VjcmV0 next", "AccountKey = <redacted> next"],
    ["AccountKey%3Dc2VjcmV0'", "AccountKey%3D<redacted>'"],
    ["AccountKey%253Dc2VjcmV0", "AccountKey%253D<redacted>"],
  ])("redacts an account key: %s", (input, output) => {
    expect(redactSecrets(input)).toBe(output);
  });

  it("redacts an account key quoted in JSON, whatever its length", () => {
    expect(redactSecrets(`{"AccountKey": "${AZURITE_KEY}"}`)).toBe('{"AccountKey": "<redacted>"}');
    expect(redactSecrets('{"AccountKey": "c2VjcmV0"}')).toBe('{"AccountKey": "<redacted>"}');
  });

  it("redacts a bare storage account key (86 base64 characters and ==), and nothing longer", () => {
    expect(redactSecrets(`key ${AZURITE_KEY}.`)).toBe("key <redacted-key>.");
    expect(redactSecrets(`key:${AZURITE_KEY}`)).toBe("key:<redacted-key>");
    const longer = `A${AZURITE_KEY}`;
    expect(redactSecrets(longer)).toBe(longer);
    const shorter = AZURITE_KEY.slice(1);
    expect(redactSecrets(shorter)).toBe(shorter);
  });

  it("redacts every user-delegation key value in the service's XML, whatever its case", () => {
    const xml =
      "<UserDelegationKey><SignedOid>oid</SignedOid><Value>c2VjcmV0+/=</Value></UserDelegationKey><value>b3RoZXI=</value><Value></Value>";
    expect(redactSecrets(xml)).toBe(
      "<UserDelegationKey><SignedOid>oid</SignedOid><Value><redacted></Value></UserDelegationKey><Value><redacted></Value><Value><redacted></Value>",
    );
  });

  it("redacts a user-delegation key value echoed as JSON or a field, padding included", () => {
    const value = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk+/0";
    expect(value.length).toBe(43);
    expect(redactSecrets(`{"signedKeyValue":"${value}="}`)).toBe(`{"signedKeyValue":"<redacted>"}`);
    expect(redactSecrets(`value: ${value}== end`)).toBe("value: <redacted> end");
    expect(redactSecrets(`VALUE=${value.slice(0, 40)};`)).toBe("VALUE=<redacted>;");
    expect(redactSecrets(`SignedKeyValue = '${value}'`)).toBe("SignedKeyValue = '<redacted>'");
  });

  it("leaves short values and words that only end in value alone", () => {
    const short = "value=QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVph"; // 39 characters
    expect(redactSecrets(short)).toBe(short);
    const other = "keyvalue=QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk";
    expect(redactSecrets(other)).toBe(other);
  });
});

describe("rememberSecret", () => {
  it("redacts a remembered value raw, percent-encoded once or twice (escapes in either case) and in base64, everywhere it occurs", () => {
    const secret = fresh("Minted");
    rememberSecret(secret);
    const once = encodeURIComponent(secret);
    const twice = encodeURIComponent(once);
    const lowerHex = (text: string) => text.replace(/%[0-9A-F]{2}/g, (e) => e.toLowerCase());
    const forms = [
      secret,
      once,
      lowerHex(once),
      twice,
      lowerHex(twice),
      Buffer.from(secret).toString("base64"),
      Buffer.from(secret).toString("base64url"),
    ];
    // Twice encoded, every escape is %25 followed by digits: its lower-hex form is the same.
    expect(new Set(forms).size).toBe(6);
    for (const form of forms) expect(redactSecrets(`a ${form} b ${form} c`)).toBe("a <redacted> b <redacted> c");
    // Upper-casing the value itself is no encoding: it is not the secret.
    expect(redactSecrets(`a ${once.toUpperCase()} b`)).toBe(`a ${once.toUpperCase()} b`);
  });

  it("ignores values shorter than 8 characters, which would redact ordinary words", () => {
    rememberSecret("Short7x");
    expect(redactSecrets("a Short7x b")).toBe("a Short7x b");
    const eight = `E${randomBytes(2).toString("hex")}Zz8`.slice(0, 8);
    rememberSecret(eight);
    expect(redactSecrets(`a ${eight} b`)).toBe("a <redacted> b");
  });

  it("keeps the newest 2000 forms: the oldest go first, and remembering a value again makes it new", () => {
    const first = fresh("First");
    const second = fresh("Second");
    rememberSecret(first);
    rememberSecret(second);
    // Fewer than 2000 forms later both are still known; remembering the first again makes it the newest.
    for (let i = 0; i < 100; i++) rememberSecret(fresh(`Some${i}`));
    expect(redactSecrets(`${first} ${second}`)).toBe("<redacted> <redacted>");
    rememberSecret(first);
    // 2000 more forms push out everything remembered before them, the renewed first included.
    for (let i = 0; i < 2000; i++) rememberSecret(fresh(`Fill${i}`));
    expect(redactSecrets(`x ${second} y`)).toBe(`x ${second} y`);
    expect(redactSecrets(`x ${first} y`)).toBe(`x ${first} y`);
  });

  it("evicts the oldest remembered value first", () => {
    const old = fresh("Old");
    rememberSecret(old);
    const filler = Array.from({ length: 400 }, (_, i) => fresh(`F${i}`));
    for (const value of filler) rememberSecret(value);
    // 400 values of 7 forms each are more than 2000: the oldest are gone, the newest are kept.
    expect(redactSecrets(`x ${old} y`)).toBe(`x ${old} y`);
    expect(redactSecrets(filler.at(-1)!)).toBe("<redacted>");
  });
});

describe("toSafeError", () => {
  it("returns a new Error with the same name and a redacted message", () => {
    const original = new TypeError("GET https://h/c?sv=2025&sig=abc failed with Bearer abc123");
    const safe = toSafeError(original);
    expect(safe).not.toBe(original);
    expect(safe).toBeInstanceOf(Error);
    expect(safe.name).toBe("TypeError");
    expect(safe.message).toBe("GET https://h/c?<redacted-sas> failed with Bearer <redacted>");
  });

  it("adds the request ids a failure carries when its message does not name them already", () => {
    const requestId = "0f6c1a2b-0000-4000-8000-000000000001";
    const clientRequestId = "0f6c1a2b-0000-4000-8000-000000000002";
    const failed = Object.assign(new Error("The specified container does not exist."), { requestId, clientRequestId });
    expect(toSafeError(failed).message).toBe(
      `The specified container does not exist. (x-ms-request-id ${requestId}, x-ms-client-request-id ${clientRequestId})`,
    );
    const named = Object.assign(new Error(`refused (x-ms-request-id ${requestId})`), { requestId, clientRequestId });
    expect(toSafeError(named).message).toBe(
      `refused (x-ms-request-id ${requestId}) (x-ms-client-request-id ${clientRequestId})`,
    );
    const both = Object.assign(new Error(`refused ${requestId} ${clientRequestId}`), { requestId, clientRequestId });
    expect(toSafeError(both).message).toBe(`refused ${requestId} ${clientRequestId}`);
  });

  it("says what to do about a credential failure, in one line", () => {
    const chain = new CredentialUnavailableError(
      "ManagedIdentityCredential: no endpoint.\nAzureCliCredential: Please run 'az login'.",
    );
    const safe = toSafeError(chain);
    expect(safe.name).toBe("CredentialUnavailableError");
    expect(safe.message).toBe(
      "no Azure token could be acquired (ManagedIdentityCredential: no endpoint.): sign in with az login, or check the managed identity the app runs as (IDENTITY_ENDPOINT, BackupStorage__clientId)",
    );
    expect(toSafeError(new CredentialUnavailableError("x".repeat(300))).message).toContain(`(${"x".repeat(200)})`);
    // Every failure of a credential chain is told the same way, whichever class carries it.
    const failures = [
      new AggregateAuthenticationError([new CredentialUnavailableError("none")], "all failed"),
      new AuthenticationRequiredError({ scopes: ["https://managedhsm.azure.net/.default"], message: "sign in" }),
    ];
    for (const failure of failures)
      expect(toSafeError(failure).message).toMatch(/^no Azure token could be acquired \(/);
  });

  it("turns anything else thrown into an Error with its redacted text", () => {
    expect(toSafeError("Bearer abc123").message).toBe("Bearer <redacted>");
    expect(toSafeError("Bearer abc123").name).toBe("Error");
    expect(toSafeError(42).message).toBe("42");
    expect(toSafeError({ toString: () => "AccountKey=abc" }).message).toBe("AccountKey=<redacted>");
  });
});
