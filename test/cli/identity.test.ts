import type { AccessToken, TokenCredential } from "@azure/core-auth";
import { DefaultAzureCredential } from "@azure/identity";
import { describe, expect, inject, it } from "vitest";
import { signedInAs } from "../../src/cli/identity.js";

const OID = "3f2b8c1e-0d4a-4c7e-9b1f-5a6e7d8c9b0a";
const APP = "b1c2d3e4-f5a6-4b7c-8d9e-0f1a2b3c4d5e";
const options = { scope: "https://managedhsm.azure.net/.default", timeoutMs: 2000, osUser: () => "opsuser" };

/** A credential that issues a JWT with these claims: the token is the dependency, signedInAs is under test. */
function issuing(claims: Record<string, unknown> | string): TokenCredential {
  const payload = typeof claims === "string" ? claims : Buffer.from(JSON.stringify(claims)).toString("base64url");
  return {
    getToken: async (): Promise<AccessToken> => ({
      token: `eyJhbGciOiJub25lIn0.${payload}.c2lnbmF0dXJl`,
      expiresOnTimestamp: Date.now() + 3_600_000,
    }),
  };
}

describe("who runs the CLI (requestedBy)", () => {
  it("names a signed-in person by sign-in name and object id", async () => {
    expect(await signedInAs(issuing({ upn: "alice@contoso.com", oid: OID, appid: APP }), options)).toBe(
      `cli alice@contoso.com (oid ${OID})`,
    );
    // Guest and personal accounts carry preferred_username or unique_name instead of upn.
    expect(await signedInAs(issuing({ preferred_username: "bob@fabrikam.com", oid: OID }), options)).toBe(
      `cli bob@fabrikam.com (oid ${OID})`,
    );
  });

  it("names a service principal or managed identity by app id, and the local managed identity through the real credential", async () => {
    expect(await signedInAs(issuing({ appid: APP, oid: OID }), options)).toBe(`cli app ${APP} (oid ${OID})`);
    expect(await signedInAs(issuing({ oid: OID }), options)).toBe(`cli oid ${OID}`);
    const real = await signedInAs(new DefaultAzureCredential(), options);
    expect(real).toMatch(new RegExp(`^cli app [0-9a-f-]{36} \\(oid ${inject("identityPrincipalId")}\\)$`));
  });

  it("falls back to the OS user when there is no credential, no token, an opaque token or unusable claims", async () => {
    expect(await signedInAs(undefined, options)).toBe("cli opsuser");
    const refusing: TokenCredential = { getToken: () => Promise.reject(new Error("not signed in")) };
    expect(await signedInAs(refusing, options)).toBe("cli opsuser");
    expect(await signedInAs({ getToken: async () => null }, options)).toBe("cli opsuser");
    expect(await signedInAs(issuing("not base64 json!"), options)).toBe("cli opsuser");
    expect(await signedInAs(issuing(Buffer.from("[1,2]").toString("base64url")), options)).toBe("cli opsuser");
    // A claim is input: a name with spaces or a newline, or an oid that is no GUID, is not recorded.
    expect(await signedInAs(issuing({ upn: "eve\nMhsmRestoreOutcome {}", oid: "x" }), options)).toBe("cli opsuser");
    expect(await signedInAs(issuing({ upn: "eve <script>", oid: OID }), options)).toBe(`cli oid ${OID}`);
  });

  it("does not wait past its deadline for a credential that never answers", async () => {
    const hanging: TokenCredential = {
      getToken: (_scopes, opts) =>
        new Promise((_resolve, reject) =>
          opts?.abortSignal?.addEventListener("abort", () => reject(new Error("aborted"))),
        ),
    };
    const started = Date.now();
    expect(await signedInAs(hanging, { ...options, timeoutMs: 100 })).toBe("cli opsuser");
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it("asks for the scope it is given, so the command's own sign-in serves it", async () => {
    const asked: string[] = [];
    const credential: TokenCredential = {
      getToken: async (scopes) => {
        asked.push(String(scopes));
        return null;
      },
    };
    await signedInAs(credential, { ...options, scope: "https://storage.azure.com/.default" });
    expect(asked).toEqual(["https://storage.azure.com/.default"]);
  });
});
