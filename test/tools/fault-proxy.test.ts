/**
 * The fault proxy against real targets: Azurite's table service through the real data-tables client
 * (shared-key signing survives the proxy), and a plain echo server where exact forwarding is visible.
 */
import { createServer, request, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { TableClient } from "@azure/data-tables";
import { BlobServiceClient, ContainerSASPermissions } from "@azure/storage-blob";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { inject } from "vitest";
import { HsmRequestError } from "../../src/lib/hsm/errors.js";
import { ManagedHsmBackupClient } from "../../src/lib/hsm/client.js";
import { startHsmEmulator } from "../../tools/hsm-emulator/index.js";
import { startFaultProxy, withEndpoint, type FaultProxy, type FaultProxyOptions } from "../support/fault-proxy.js";

interface Echoed {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

let echo: { server: Server; url: string; seen: Echoed[] };
const proxies: FaultProxy[] = [];

beforeAll(async () => {
  const seen: Echoed[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const record = {
        method: req.method ?? "",
        url: req.url ?? "",
        headers: req.headers,
        body: Buffer.concat(chunks).toString("utf8"),
      };
      seen.push(record);
      const text = JSON.stringify(record);
      res
        .writeHead(200, {
          "content-type": "application/json",
          "x-echo": "1",
          connection: "keep-alive, x-drop-me",
          "x-drop-me": "hop",
        })
        .end(text);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  echo = { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
});

afterAll(async () => {
  await new Promise((resolve) => echo.server.close(resolve));
});

afterEach(async () => {
  await Promise.all(proxies.splice(0).map((p) => p.stop()));
  echo.seen.length = 0;
});

async function proxy(target = echo.url, options?: FaultProxyOptions): Promise<FaultProxy> {
  const started = await startFaultProxy(target, options);
  proxies.push(started);
  return started;
}

function tableEndpoint(): string {
  return /TableEndpoint=([^;]+)/.exec(inject("azuriteConnectionString"))![1]!;
}

/** A table client that goes through `via`, and one that goes straight to Azurite, both without retries. */
function tables(via: FaultProxy, name: string): { proxied: TableClient; direct: TableClient } {
  const options = { allowInsecureConnection: true, retryOptions: { maxRetries: 0 } };
  const connection = inject("azuriteConnectionString");
  return {
    proxied: TableClient.fromConnectionString(withEndpoint(connection, "TableEndpoint", via.url), name, options),
    direct: TableClient.fromConnectionString(connection, name, options),
  };
}

const uniqueTable = () => `fp${Date.now().toString(36)}${Math.floor(Math.random() * 1e6)}`;

describe("fault proxy in front of Azurite tables", () => {
  it("forwards a signed data-tables session unchanged: create table, insert, read, query", async () => {
    const p = await proxy(tableEndpoint());
    expect(p.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/devstoreaccount1$/);
    const { proxied, direct } = tables(p, uniqueTable());
    await proxied.createTable();
    await proxied.createEntity({ partitionKey: "p", rowKey: "r1", value: 1 });
    expect(await proxied.getEntity("p", "r1")).toMatchObject({ value: 1 });
    expect(await direct.getEntity("p", "r1")).toMatchObject({ value: 1 });
    const listed = [];
    for await (const e of proxied.listEntities()) listed.push(e.rowKey);
    expect(listed).toEqual(["r1"]);
    expect(p.log.every((e) => e.fault === undefined && e.status !== undefined && e.status < 300)).toBe(true);
    expect(p.stats()).toMatchObject({ requests: p.log.length, forwarded: p.log.length });
  });

  it("status: answers itself with status, Retry-After and body; Azurite never sees the request", async () => {
    const p = await proxy(tableEndpoint());
    const { proxied, direct } = tables(p, uniqueTable());
    await direct.createTable();
    p.inject({ kind: "status", status: 503, retryAfter: "7" }, { method: "POST" });
    const failure = await proxied.createEntity({ partitionKey: "p", rowKey: "r1" }).catch((e: unknown) => e);
    expect(failure).toMatchObject({ statusCode: 503 });
    expect(
      (failure as { response?: { headers: { get(n: string): string | undefined } } }).response?.headers.get(
        "retry-after",
      ),
    ).toBe("7");
    await expect(direct.getEntity("p", "r1")).rejects.toMatchObject({ statusCode: 404 });
    // One-shot: the next insert goes through.
    await proxied.createEntity({ partitionKey: "p", rowKey: "r1" });
    expect(p.log.map((e) => [e.method, e.fault, e.status])).toEqual([
      ["POST", "status", 503],
      ["POST", undefined, 204],
    ]);
  });

  it("lostResponse: Azurite stores the row although the client got no answer", async () => {
    const p = await proxy(tableEndpoint());
    const { proxied, direct } = tables(p, uniqueTable());
    await direct.createTable();
    p.inject({ kind: "lostResponse" }, { method: "POST" });
    await expect(proxied.createEntity({ partitionKey: "p", rowKey: "lost", v: "x" })).rejects.toThrow();
    expect(await direct.getEntity("p", "lost")).toMatchObject({ v: "x" });
    // The retry a careless client would make now meets the row it did not know it wrote.
    await expect(proxied.createEntity({ partitionKey: "p", rowKey: "lost", v: "x" })).rejects.toMatchObject({
      statusCode: 409,
    });
    expect(p.log[0]).toMatchObject({ method: "POST", fault: "lostResponse" });
    expect(p.log[0]!.status).toBeUndefined();
  });

  it("rewrite: the client sees the rewritten answer of a request Azurite did act on", async () => {
    const p = await proxy(tableEndpoint());
    const { proxied, direct } = tables(p, uniqueTable());
    await direct.createTable();
    await direct.createEntity({ partitionKey: "p", rowKey: "r1", v: "real" });
    p.inject(
      { kind: "rewrite", transform: (a) => ({ ...a, bodyText: a.bodyText.replace('"v":"real"', '"v":"forged"') }) },
      { method: "GET" },
    );
    expect(await proxied.getEntity("p", "r1")).toMatchObject({ v: "forged" });
    expect(await proxied.getEntity("p", "r1")).toMatchObject({ v: "real" });
  });
});

describe("fault proxy in front of a plain server", () => {
  it("forwards method, path, query, headers and body; keeps the client's Host; drops hop-by-hop headers both ways", async () => {
    const p = await proxy();
    const body = "x".repeat(1024 * 1024);
    // node:http, not fetch: fetch refuses to send a Connection header.
    const response = await new Promise<{ status: number; headers: IncomingMessage["headers"]; text: string }>(
      (resolve, reject) => {
        const req = request(
          `${p.url}/a/b%20c?x=1&y=%2F`,
          {
            method: "PUT",
            headers: {
              "x-custom": "yes",
              connection: "keep-alive, x-hop",
              "x-hop": "no",
              "content-length": body.length,
            },
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on("data", (c: Buffer) => chunks.push(c));
            res.on("end", () =>
              resolve({
                status: res.statusCode ?? 0,
                headers: res.headers,
                text: Buffer.concat(chunks).toString("utf8"),
              }),
            );
          },
        );
        req.on("error", reject);
        req.end(body);
      },
    );
    expect(response.status).toBe(200);
    expect(response.headers["x-echo"]).toBe("1");
    expect(response.headers["x-drop-me"]).toBeUndefined();
    const seen = JSON.parse(response.text) as Echoed;
    expect(seen).toMatchObject({ method: "PUT", url: "/a/b%20c?x=1&y=%2F" });
    expect(seen.body.length).toBe(body.length);
    expect(seen.headers).toMatchObject({
      "x-custom": "yes",
      host: new URL(p.url).host,
      "content-length": String(body.length),
    });
    expect(seen.headers["x-hop"]).toBeUndefined();
    expect(p.log).toEqual([{ method: "PUT", path: "/a/b%20c", query: "x=1&y=%2F", status: 200 }]);
  });

  it("rewriteHost sends the target's host", async () => {
    const p = await proxy(echo.url, { rewriteHost: true });
    const seen = (await (await fetch(`${p.url}/h`)).json()) as Echoed;
    expect(seen.headers.host).toBe(new URL(echo.url).host);
  });

  it("refuse: the connection drops before anything is forwarded", async () => {
    const p = await proxy();
    p.inject({ kind: "refuse" });
    await expect(fetch(`${p.url}/r`, { method: "POST", body: "b" })).rejects.toThrow();
    expect(echo.seen).toHaveLength(0);
    expect((await fetch(`${p.url}/r`)).status).toBe(200);
    expect(p.stats()).toMatchObject({ requests: 2, forwarded: 1, refuse: 1 });
  });

  it("hang: nothing is forwarded, the client's timeout ends the wait, and stop() returns at once with the socket still open", async () => {
    const p = await proxy();
    p.inject({ kind: "hang" }, { times: 2 });
    await expect(fetch(`${p.url}/h1`, { signal: AbortSignal.timeout(200) })).rejects.toThrow(/abort|timeout/i);
    const pending = fetch(`${p.url}/h2`).then(
      () => "answered",
      () => "dropped",
    );
    await new Promise((r) => setTimeout(r, 100));
    const began = Date.now();
    await p.stop();
    expect(Date.now() - began).toBeLessThan(1000);
    expect(await pending).toBe("dropped");
    expect(echo.seen).toHaveLength(0);
  });

  it("hang with ms drops the connection after that long", async () => {
    const p = await proxy();
    p.inject({ kind: "hang", ms: 150 });
    const began = Date.now();
    await expect(fetch(`${p.url}/h`)).rejects.toThrow();
    expect(Date.now() - began).toBeGreaterThanOrEqual(140);
    expect(echo.seen).toHaveLength(0);
  });

  it("delay: forwarded and answered after the delay", async () => {
    const p = await proxy();
    p.inject({ kind: "delay", ms: 200 });
    const began = Date.now();
    expect((await fetch(`${p.url}/d`)).status).toBe(200);
    expect(Date.now() - began).toBeGreaterThanOrEqual(190);
    expect(echo.seen.map((s) => s.url)).toEqual(["/d"]);
  });

  it("rewrite: status, headers and body are replaced and Content-Length follows the new body", async () => {
    const p = await proxy();
    p.inject({
      kind: "rewrite",
      transform: (a) => ({
        status: 202,
        headers: { ...a.headers, "x-extra": "1" },
        bodyText: `<html>${a.status}</html>`,
      }),
    });
    const response = await fetch(`${p.url}/w`);
    expect(response.status).toBe(202);
    expect(response.headers.get("x-extra")).toBe("1");
    expect(response.headers.get("content-length")).toBe(String("<html>200</html>".length));
    expect(await response.text()).toBe("<html>200</html>");
    expect(echo.seen).toHaveLength(1);
  });

  it("matches faults by method, path and count, in injection order", async () => {
    const p = await proxy();
    p.inject({ kind: "status", status: 500 }, { method: "POST", path: /^\/jobs$/, times: 2 });
    p.inject({ kind: "status", status: 429 }, { path: /^\/jobs$/ });
    const statuses = [];
    for (const [method, path] of [
      ["GET", "/jobs"],
      ["POST", "/other"],
      ["POST", "/jobs"],
      ["POST", "/jobs"],
      ["POST", "/jobs"],
      ["POST", "/jobs"],
    ] as const) {
      statuses.push((await fetch(`${p.url}${path}`, { method })).status);
    }
    // The GET takes the 429 (the first fault it matches); the POSTs take the two 500s; then nothing is left.
    expect(statuses).toEqual([429, 200, 500, 500, 200, 200]);
  });

  it("skip lets that many matching requests through first, without holding back later faults", async () => {
    const p = await proxy();
    p.inject({ kind: "status", status: 500 }, { method: "POST", skip: 2 });
    p.inject({ kind: "status", status: 429 }, { method: "POST" });
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await fetch(`${p.url}/s`, { method: "POST" })).status);
    expect(statuses).toEqual([429, 200, 500, 200]);
    expect(() => p.inject({ kind: "refuse" }, { skip: -1 })).toThrow(RangeError);
  });

  it("answers 502 when the target is down", async () => {
    const dead = createServer();
    await new Promise<void>((resolve) => dead.listen(0, "127.0.0.1", resolve));
    const deadUrl = `http://127.0.0.1:${(dead.address() as AddressInfo).port}`;
    await new Promise((resolve) => dead.close(resolve));
    const p = await proxy(deadUrl);
    const response = await fetch(`${p.url}/x`);
    expect(response.status).toBe(502);
    expect(p.stats().upstreamErrors).toBe(1);
  });

  it("chaos: the same seed gives the same faults for the same requests, another seed others; clear() stops it", async () => {
    async function run(seed: number): Promise<string[]> {
      const p = await proxy(echo.url, { seed });
      p.chaos({ status: 0.3, refuse: 0.2, delay: 0.1 }, { status: 500, delayMs: 1, path: /^\/c\// });
      const outcomes: string[] = [];
      for (let i = 0; i < 40; i++) {
        outcomes.push(
          await fetch(`${p.url}/c/${i}`).then(
            (r) => String(r.status),
            () => "error",
          ),
        );
      }
      // What the client met is what the log says was drawn.
      const expected: Record<string, string> = { status: "500", refuse: "error", delay: "200", "-": "200" };
      expect(outcomes).toEqual(p.log.map((e) => expected[e.fault ?? "-"]));
      // Unmatched paths are never touched.
      expect((await fetch(`${p.url}/elsewhere`)).status).toBe(200);
      p.clear();
      for (let i = 0; i < 10; i++) expect((await fetch(`${p.url}/c/${i}`)).status).toBe(200);
      return p.log.slice(0, 40).map((e) => e.fault ?? "-");
    }
    const first = await run(42);
    const again = await run(42);
    const other = await run(7);
    expect(again).toEqual(first);
    expect(other).not.toEqual(first);
    const counts = (faults: string[], kind: string) => faults.filter((f) => f === kind).length;
    expect(counts(first, "status")).toBeGreaterThan(3);
    expect(counts(first, "refuse")).toBeGreaterThan(1);
    expect(counts(first, "-")).toBeGreaterThan(8);
  });

  it("chaos refuses rates that cannot be probabilities", async () => {
    const p = await proxy();
    expect(() => p.chaos({ status: 0.7, refuse: 0.5 })).toThrow(/add up to 1\.2/);
    expect(() => p.chaos({ hang: -0.1 })).toThrow(RangeError);
    expect(() => p.inject({ kind: "refuse" }, { times: 0 })).toThrow(RangeError);
  });
});

describe("fault proxy in front of the HSM emulator, with the app's client", () => {
  /** An unsigned JWT with the HSM audience, as the project's local identity endpoint issues. */
  const token = () => {
    const encode = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
    return `${encode({ alg: "none" })}.${encode({ aud: "https://managedhsm.azure.net", exp: Math.floor(Date.now() / 1000) + 3600, oid: "o" })}.`;
  };
  const credential = { getToken: async () => ({ token: token(), expiresOnTimestamp: Date.now() + 3600e3 }) };

  async function setup() {
    const emulator = await startHsmEmulator({ name: "proxiedhsm", retryAfterSeconds: 0, jobDurationMs: 20 });
    const p = await proxy(emulator.url);
    const container = BlobServiceClient.fromConnectionString(inject("azuriteConnectionString")).getContainerClient(
      uniqueTable(),
    );
    await container.create();
    const sasUrl = await container.generateSasUrl({
      permissions: ContainerSASPermissions.parse("crdw"),
      expiresOn: new Date(Date.now() + 3600e3),
    });
    const hsmClient = new ManagedHsmBackupClient(p.url, credential, { defaultPollIntervalMs: 10 });
    return { emulator, p, container: container.url, sas: sasUrl.split("?")[1]!, hsmClient };
  }

  it("polls back through the proxy: the emulator builds Azure-AsyncOperation from the Host it was sent", async () => {
    const { emulator, p, container, sas, hsmClient } = await setup();
    try {
      const final = await (await hsmClient.beginBackup(container, sas)).pollUntilDone();
      expect(final.folderUri).toMatch(/\/mhsm-proxiedhsm-\d{16}$/);
      expect(
        p.log.filter((e) => e.method === "GET" && /^\/backup\/[0-9a-f]{32}\/pending$/.test(e.path)).length,
      ).toBeGreaterThan(0);
      expect(emulator.requests.length).toBe(p.log.length);
    } finally {
      await emulator.stop();
    }
  });

  it("lostResponse on POST /backup: the HSM started a job the app's client never heard of", async () => {
    const { emulator, p, container, sas, hsmClient } = await setup();
    try {
      // The first POST is the challenge probe (401); the second carries the token and the body.
      p.inject({ kind: "lostResponse" }, { method: "POST", path: /^\/backup$/, skip: 1 });
      const failure = await hsmClient.beginBackup(container, sas).catch((e: unknown) => e);
      expect(failure).toBeInstanceOf(HsmRequestError);
      expect(String(failure)).toMatch(/not retried, because the HSM may have started the job/);
      const started = emulator.requests.filter((r) => r.method === "POST" && r.path === "/backup" && r.status === 202);
      expect(started).toHaveLength(1);
    } finally {
      await emulator.stop();
    }
  });
});
