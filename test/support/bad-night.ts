/**
 * An app whose HSMs are any mix of emulators, hostile stand-ins and fault proxies, optionally with
 * its catalog table behind a fault proxy: the worst-night tests build their nights from these.
 */
import { inject } from "vitest";
import type { Env } from "../../src/lib/config.js";
import type { DepsOptions } from "../../src/lib/deps.js";
import { startHsmEmulator, type HsmEmulator, type HsmEmulatorOptions } from "../../tools/hsm-emulator/index.js";
import { startTestApp, type TestApp } from "./app.js";
import { startFaultProxy, withEndpoint, type FaultProxy } from "./fault-proxy.js";
import { startHostileHsm, type HostileHsm, type HostileHsmOptions } from "./hostile-hsm.js";
import { freePort } from "./loopback.js";

/** Everything a test started, stopped together by `stopAll`. */
export class Night {
  private readonly stops: (() => Promise<void>)[] = [];

  /**
   * An emulator named as the app names a loopback HSM (`loopback-<port>`), so that its folders carry
   * the name the catalog uses; with `behindProxy` the name is the proxy's, and the app goes through it.
   */
  async emulator(options: HsmEmulatorOptions = {}): Promise<HsmEmulator> {
    const port = options.port ?? (await freePort());
    const emulator = await startHsmEmulator({
      name: `loopback-${port}`,
      port,
      retryAfterSeconds: 0,
      jobDurationMs: 100,
      ...options,
    });
    this.stops.push(() => emulator.stop());
    return emulator;
  }

  /** An emulator the app reaches through a fault proxy (its URL is the proxy's). */
  async emulatorBehindProxy(options: HsmEmulatorOptions = {}): Promise<{ emulator: HsmEmulator; proxy: FaultProxy }> {
    const port = await freePort();
    const emulator = await startHsmEmulator({
      name: `loopback-${port}`,
      retryAfterSeconds: 0,
      jobDurationMs: 100,
      ...options,
    });
    this.stops.push(() => emulator.stop());
    const proxy = await startFaultProxy(emulator.url, { port });
    this.stops.push(() => proxy.stop());
    return { emulator, proxy };
  }

  async hostile(options: HostileHsmOptions = {}): Promise<HostileHsm> {
    const hsm = await startHostileHsm({ name: `hostile${this.stops.length}`, ...options });
    this.stops.push(() => hsm.stop());
    return hsm;
  }

  async proxy(target: string): Promise<FaultProxy> {
    const proxy = await startFaultProxy(target);
    this.stops.push(() => proxy.stop());
    return proxy;
  }

  /**
   * The app over these HSM URLs (in this order). With tableProxy its catalog goes through a fault
   * proxy in front of Azurite's table endpoint. Waits between catalog write tries are short.
   */
  async app(
    hsmUrls: readonly string[],
    options: { tableProxy?: boolean; env?: Env; deps?: DepsOptions } = {},
  ): Promise<{ app: TestApp; table?: FaultProxy }> {
    let connectionString = inject("azuriteConnectionString");
    let table: FaultProxy | undefined;
    if (options.tableProxy) {
      const endpoint = /(?:^|;)TableEndpoint=([^;]+)/.exec(connectionString)?.[1];
      if (!endpoint) throw new Error("The Azurite connection string names no TableEndpoint");
      table = await this.proxy(endpoint);
      connectionString = withEndpoint(connectionString, "TableEndpoint", table.url);
    }
    const app = await startTestApp({
      hsmCount: 0,
      env: { MANAGED_HSM_URLS: hsmUrls.join(","), BackupStorage: connectionString, ...options.env },
      deps: { persistDelaysMs: [50, 100, 200], ...options.deps },
    });
    return { app, ...(table ? { table } : {}) };
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.stops.splice(0).map((stop) => stop()));
  }
}

/** Lines of one outcome event, parsed, in the order they were logged. */
export function events(logs: readonly string[], name: string): any[] {
  return logs
    .filter((l) => l.includes(` ${name} `))
    .map((l) => JSON.parse(l.slice(l.indexOf(`${name} `) + name.length + 1)));
}
