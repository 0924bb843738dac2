/**
 * redactSecrets over generated secrets in every shape a storage or HSM error text has been seen to
 * echo them in (issue 6, "the worst night"): a seeded generator, so a failure names a case that can
 * be replayed. The last block checks a SAS the app's own signing path minted against Azurite.
 */
import { afterEach, describe, expect, it } from "vitest";
import { redactSecrets, rememberSecret, toSafeError } from "../../src/lib/redact.js";
import { startTestApp, type TestApp } from "../support/app.js";
import { prng } from "../support/fault-proxy.js";

const CASES = 250;
const SEED = 0x6e16_2026;

function bytes(next: () => number, n: number): Buffer {
  return Buffer.from(Array.from({ length: n }, () => Math.floor(next() * 256)));
}

/** 32 random bytes in base64 (44 characters, one "="), drawn until it holds both "+" and "/". */
function signature(next: () => number): string {
  for (;;) {
    const value = bytes(next, 32).toString("base64");
    if (value.includes("+") && value.includes("/")) return value;
  }
}

const enc = encodeURIComponent;
const base64url = (b: Buffer) => b.toString("base64url");

/** A JWT-shaped token: the header every Entra token starts with, random payload and signature. */
function jwt(next: () => number): string {
  const header = base64url(Buffer.from('{"typ":"JWT","alg":"RS256","kid":"k1"}'));
  return `${header}.${base64url(bytes(next, 120))}.${base64url(bytes(next, 64))}`;
}

interface Shape {
  readonly name: string;
  /** The text a service might send back, with the secret in it. */
  readonly text: string;
  /** The secret (and pieces of it) that must not survive. */
  readonly secrets: readonly string[];
}

/** Every shape for one generated case. */
function shapes(next: () => number): Shape[] {
  const sig = signature(next);
  const sas = `sv=2025-11-05&st=2026-12-01T00%3A00%3A00Z&se=2026-12-01T02%3A00%3A00Z&sr=c&sp=crdw&spr=https&sig=${enc(sig)}`;
  const token = jwt(next);
  const opaque = bytes(next, 40).toString("base64");
  const accountKey = bytes(next, 64).toString("base64");
  const delegationValue = bytes(next, 32).toString("base64");
  const url = `https://acct.blob.core.windows.net/mhsm-backups/mhsm-contoso-2026120100000000`;
  const forms = [sig, enc(sig), enc(enc(sig))];
  return [
    {
      name: "raw in a URL query",
      text: `PUT ${url}/manifest.json?comp=block&sig=${sig} failed with 403`,
      secrets: forms,
    },
    {
      name: "percent-encoded once",
      text: `storageResourceUri=${enc(`${url}?sp=crdw&sig=${sig}`)} rejected`,
      secrets: forms,
    },
    { name: "percent-encoded twice", text: `redirect=${enc(enc(`${url}?sp=crdw&sig=${sig}`))}`, secrets: forms },
    { name: "sig= then a space", text: `bad SAS: sig= ${sig} (expired)`, secrets: forms },
    { name: "sig= then a newline", text: `bad SAS: sig=\n${sig}\nend`, secrets: forms },
    { name: "sig as a JSON field", text: `{"error":{"sig":"${sig}","code":"AuthenticationFailed"}}`, secrets: forms },
    { name: "signature: value", text: `Signature mismatch; signature: ${sig}; retry`, secrets: forms },
    { name: "Signature=value", text: `AuthenticationErrorDetail: Signature=${sig}.`, secrets: forms },
    { name: "uppercase SIG=", text: `QUERY SV=2025-11-05&SIG=${sig}&SE=2026`, secrets: forms },
    { name: "a full SAS query string", text: `${url}?${sas}`, secrets: forms },
    { name: "a full SAS query string on its own", text: `token: ${sas}`, secrets: forms },
    {
      name: "a Bearer token",
      text: `Authorization: Bearer ${token}\nx-ms-version: 2025-11-05`,
      secrets: [token, token.split(".")[1]!, token.split(".")[2]!],
    },
    { name: "an opaque Bearer token", text: `authorization: Bearer ${opaque}`, secrets: [opaque, enc(opaque)] },
    {
      name: "a raw JWT",
      text: `the token ${token} has expired`,
      secrets: [token, token.split(".")[1]!, token.split(".")[2]!],
    },
    {
      name: "an AccountKey in a connection string",
      text: `DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=${accountKey};EndpointSuffix=core.windows.net`,
      secrets: [accountKey, enc(accountKey)],
    },
    { name: "a bare account key", text: `the key ${accountKey} was rejected`, secrets: [accountKey, enc(accountKey)] },
    {
      name: "a user-delegation key in XML",
      text: `<?xml version="1.0"?><UserDelegationKey><SignedOid>0000</SignedOid><SignedVersion>2025-11-05</SignedVersion><Value>${delegationValue}</Value></UserDelegationKey>`,
      secrets: [delegationValue, enc(delegationValue)],
    },
    {
      name: "a user-delegation key as JSON",
      text: `{"signedOid":"0000","value":"${delegationValue}"}`,
      secrets: [delegationValue, enc(delegationValue)],
    },
  ];
}

function expectNoneSurvive(shape: Shape, redacted: string, label: string): void {
  for (const secret of shape.secrets) {
    expect(
      redacted.includes(secret),
      `${label}: ${shape.name} kept ${JSON.stringify(secret)} in ${JSON.stringify(redacted)}`,
    ).toBe(false);
  }
}

describe("redactSecrets over generated secrets", () => {
  it(`removes every generated secret from every shape it is echoed in (${CASES} seeded cases)`, () => {
    const next = prng(SEED);
    for (let i = 0; i < CASES; i++) {
      for (const shape of shapes(next)) expectNoneSurvive(shape, redactSecrets(shape.text), `case ${i}`);
    }
  });

  it(`removes a signature the app minted in any encoding, even with no "sig" beside it (${CASES} seeded cases)`, () => {
    const next = prng(SEED + 1);
    for (let i = 0; i < CASES; i++) {
      const sig = signature(next);
      rememberSecret(sig);
      const forms = [sig, enc(sig), enc(enc(sig)), Buffer.from(sig).toString("base64")];
      for (const form of forms) {
        const redacted = redactSecrets(`blob write refused; the request carried ${form} and failed`);
        for (const secret of forms)
          expect(redacted.includes(secret), `case ${i}: ${JSON.stringify(redacted)}`).toBe(false);
      }
    }
  });

  it(`removes a signature whose label and separator were percent-encoded along with the text around it, once or twice (${CASES} seeded cases)`, () => {
    // The SIGNATURE pattern promises "a separator however it was encoded or spaced"; an error text
    // that is itself put into a URL encodes "sig": and "signature: " as well as the value.
    const next = prng(SEED + 4);
    for (let i = 0; i < CASES; i++) {
      const sig = signature(next);
      const labelled = [
        `sig=${sig}`,
        `sig= ${sig}`,
        `SIG=${sig}`,
        `Signature=${sig}`,
        `signature: ${sig}`,
        `{"sig":"${sig}"}`,
        `{'sig': '${sig}'}`,
      ];
      for (const text of labelled) {
        for (const encoded of [enc(`error: ${text}`), enc(enc(`error: ${text}`))]) {
          const redacted = redactSecrets(encoded);
          for (const form of [sig, enc(sig), enc(enc(sig))]) {
            expect(
              redacted.includes(form),
              `case ${i}: ${JSON.stringify(text)} encoded as ${JSON.stringify(redacted)}`,
            ).toBe(false);
          }
        }
      }
    }
  });

  it("removes a minted signature percent-encoded with lowercase hex digits, as .NET's HttpUtility.UrlEncode writes it", () => {
    const next = prng(SEED + 2);
    for (let i = 0; i < 20; i++) {
      const sig = signature(next);
      rememberSecret(sig);
      // Only the escapes are lowercase (%2b, %2f, %3d); the base64 letters keep their case.
      const lowerHex = enc(sig).replace(/%[0-9A-F]{2}/g, (escape) => escape.toLowerCase());
      const redacted = redactSecrets(`request body echoed: ${lowerHex}`);
      expect(redacted, `case ${i}`).not.toContain(lowerHex);
    }
  });

  it("leaves text without a secret exactly as it was", () => {
    const plain = [
      "Backup of HSM contoso succeeded in 38 s: https://contosobackups.blob.core.windows.net/mhsm-backups/mhsm-contoso-2026112802000312 (record 8204170330282-ff8c6507)",
      "Signature did not match. String to sign used was rl",
      "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
      "Managed HSM https://contoso.managedhsm.azure.net backup job cbce49673e4064269f5d94a4ae0e4934 ended Failed (AuthorizationPermissionMismatch)",
      "Setting MANAGED_HSM_URLS: is required: a comma-separated list of Managed HSM URLs, e.g. https://contoso.managedhsm.azure.net",
      "",
    ];
    for (const text of plain) expect(redactSecrets(text)).toBe(text);
  });
});

describe("toSafeError", () => {
  const next = prng(SEED + 3);
  const sig = signature(next);

  it("turns a thrown string into an Error whose message is redacted", () => {
    const safe = toSafeError(`GET https://acct.blob.core.windows.net/c?sp=rl&sig=${enc(sig)} failed`);
    expect(safe).toBeInstanceOf(Error);
    expect(safe.message).toMatch(/^GET https:\/\/acct\.blob\.core\.windows\.net\/c\?<redacted-sas> failed$/);
    expect(safe.message).not.toContain(enc(sig));
  });

  it("turns a thrown object into an Error whose message is redacted", () => {
    const thrown = { toString: () => `storage said: Signature=${sig}` };
    const safe = toSafeError(thrown);
    expect(safe).toBeInstanceOf(Error);
    expect(safe.message).toContain("storage said: Signature=");
    expect(safe.message).not.toContain(sig);
    const plainObject = toSafeError({ message: `sig=${sig}` });
    expect(plainObject).toBeInstanceOf(Error);
    expect(plainObject.message).not.toContain(sig);
  });

  it("turns a thrown undefined into an Error", () => {
    const safe = toSafeError(undefined);
    expect(safe).toBeInstanceOf(Error);
    expect(safe.message).toBe("undefined");
  });

  it("keeps an Error's name and redacts its message", () => {
    const error = new TypeError(`fetch failed: Bearer ${jwt(next)}`);
    const safe = toSafeError(error);
    expect(safe.name).toBe("TypeError");
    expect(safe.message).toBe("fetch failed: Bearer <redacted>");
  });
});

describe("a SAS minted by the app's own containerSas", () => {
  let app: TestApp | undefined;
  afterEach(async () => {
    await app?.stop();
    app = undefined;
  });

  it("has its signature redacted in every encoding, base64 included, wherever it appears", async () => {
    app = await startTestApp();
    await app.deps.prepare();
    for (const purpose of ["backup", "restore"] as const) {
      const { token } = await app.deps.storage.containerSas(app.container, purpose, 60);
      const sig = new URLSearchParams(token).get("sig");
      expect(sig).toMatch(/^[A-Za-z0-9+/]{43}=$/);
      const forms = [sig!, enc(sig!), enc(enc(sig!)), Buffer.from(sig!).toString("base64")];
      const texts = [
        ...forms.map((form) => `echoed without a label: ${form}.`),
        `${app.deps.storage.containerUrl(app.container)}?${token}`,
        `token=${enc(token)}`,
        `{"token":"${token}"}`,
      ];
      for (const text of texts) {
        const redacted = redactSecrets(text);
        for (const form of forms) expect(redacted, `${purpose}: ${text}`).not.toContain(form);
      }
    }
  });
});
