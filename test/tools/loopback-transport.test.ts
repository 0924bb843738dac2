/**
 * The loopback transport redirects connections and nothing else: TLS is still checked against the
 * host name the request carries and against the one CA it was given, and a host without a route is
 * refused before any I/O.
 */
import { createHttpHeaders, createPipelineRequest } from "@azure/core-rest-pipeline";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startHsmEmulator, type HsmEmulator } from "../../tools/hsm-emulator/index.js";
import { createLoopbackTransport } from "../../tools/loopback-transport.js";
import { createTestCa } from "../../tools/tls.js";
import { HSM_DOMAIN, OTHER_DOMAIN, startHttpsEmulator, testCa } from "../support/app.js";

describe("createLoopbackTransport", () => {
  let hsm: HsmEmulator;
  beforeAll(async () => {
    hsm = await startHttpsEmulator({ name: "transporthsm" });
  });
  afterAll(() => hsm.stop());

  const probe = (url: string) => createPipelineRequest({ url, method: "GET", headers: createHttpHeaders() });

  it("connects a real name to the loopback port, keeping the name in the Host header and the certificate check", async () => {
    const host = `transporthsm.${HSM_DOMAIN}`;
    const transport = createLoopbackTransport({ routes: { [host]: hsm.port }, ca: testCa().ca });
    try {
      const response = await transport.sendRequest(probe(`https://${host}/keys?api-version=7.6`));
      // The emulator's challenge: it was reached, over TLS, under that name.
      expect(response.status).toBe(401);
      expect(response.headers.get("www-authenticate")).toMatch(/resource="https:\/\/managedhsm\.azure\.net"/);
      expect(hsm.requests.at(-1)!.headers.host).toBe(host);
      expect(transport.sent).toEqual([`GET https://${host}/keys?api-version=7.6`]);
    } finally {
      transport.close();
    }
  });

  it("refuses a host it has no route for, naming it, before connecting anywhere", async () => {
    const transport = createLoopbackTransport({
      routes: { [`transporthsm.${HSM_DOMAIN}`]: hsm.port },
      ca: testCa().ca,
    });
    const before = hsm.requests.length;
    await expect(transport.sendRequest(probe(`https://other.${HSM_DOMAIN}/keys`))).rejects.toThrow(
      `loopback transport: no route for host "other.${HSM_DOMAIN}" (routes: transporthsm.${HSM_DOMAIN})`,
    );
    expect(hsm.requests.length).toBe(before);
    transport.close();
  });

  it("sends a request to a loopback address as it is, with no route needed", async () => {
    const plain = await startHsmEmulator({});
    const transport = createLoopbackTransport({ routes: {}, ca: testCa().ca });
    try {
      const request = probe(`${plain.url}/keys?api-version=7.6`);
      request.allowInsecureConnection = true; // as the app's client sets it for a loopback http URL
      const response = await transport.sendRequest(request);
      expect(response.status).toBe(401);
      expect(plain.requests).toHaveLength(1);
    } finally {
      transport.close();
      await plain.stop();
    }
  });

  it("still fails TLS for a name the certificate does not carry, and for a CA it was not given", async () => {
    const wrongName = "transporthsm.vault.azure.net";
    const unnamed = createLoopbackTransport({ routes: { [wrongName]: hsm.port }, ca: testCa().ca });
    await expect(unnamed.sendRequest(probe(`https://${wrongName}/keys`))).rejects.toMatchObject({
      code: "ERR_TLS_CERT_ALTNAME_INVALID",
    });
    unnamed.close();

    const strangerCa = createTestCa([`*.${OTHER_DOMAIN}`]).ca;
    const untrusted = createLoopbackTransport({ routes: { [`transporthsm.${HSM_DOMAIN}`]: hsm.port }, ca: strangerCa });
    await expect(untrusted.sendRequest(probe(`https://transporthsm.${HSM_DOMAIN}/keys`))).rejects.toMatchObject({
      code: expect.stringMatching(
        /UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN/,
      ),
    });
    untrusted.close();
  });
});
