/**
 * An HTTP transport that reaches stand-ins on 127.0.0.1 under real Azure host names, for tests and
 * the demo. It is handed to clients through their options (`httpClient`), so nothing about the
 * machine changes: no /etc/hosts entry, no NODE_EXTRA_CA_CERTS, no NODE_TLS_REJECT_UNAUTHORIZED.
 *
 * A request for `https://contoso.managedhsm.azure.net/backup` still carries that host in its URL,
 * its Host header and its TLS server name, and the certificate is still checked against it; only the
 * TCP connection goes to the port the route names. So the client runs exactly the code a real
 * deployment runs — https, the challenge-resource check on — against the local emulator.
 */
import {
  createDefaultHttpClient,
  type HttpClient,
  type PipelineRequest,
  type PipelineResponse,
} from "@azure/core-rest-pipeline";
import http from "node:http";
import https from "node:https";
import { isLoopback } from "../src/lib/config.js";

export interface LoopbackTransportOptions {
  /**
   * Host name (lower case) → port on 127.0.0.1. A host without a route is refused before any I/O,
   * except a host that already is a loopback address (127.0.0.1, ::1, localhost): that request is
   * sent as it is, so a test can put a plain-http stand-in (a fault proxy) beside the routed names.
   */
  readonly routes: Readonly<Record<string, number>>;
  /** The only CA trusted for https (PEM), e.g. from createTestCa. */
  readonly ca?: string;
}

export interface LoopbackTransport extends HttpClient {
  /** `METHOD url` of every request it was asked to send, in order, routed or not. */
  readonly sent: readonly string[];
  /** Closes the pooled connections. */
  close(): void;
}

/** Connects to the routed loopback port while the request keeps its own host name (Host header, SNI, certificate check). */
function routed<T extends http.Agent>(agent: T, portFor: (host: string) => number, tls: boolean): T {
  const connect = agent.createConnection.bind(agent);
  agent.createConnection = (options, callback) => {
    const host = String((options as { servername?: string }).servername ?? options.host ?? "");
    return connect(
      { ...options, host: "127.0.0.1", port: portFor(host), ...(tls ? { servername: host } : {}) },
      callback,
    );
  };
  return agent;
}

export function createLoopbackTransport(options: LoopbackTransportOptions): LoopbackTransport {
  const portFor = (host: string): number => {
    const port = options.routes[host.toLowerCase()];
    if (port === undefined) {
      throw new Error(
        `loopback transport: no route for host "${host}" (routes: ${Object.keys(options.routes).join(", ") || "none"})`,
      );
    }
    return port;
  };
  const inner = createDefaultHttpClient();
  const httpsAgent = routed(
    new https.Agent({ keepAlive: true, ...(options.ca ? { ca: options.ca } : {}) }),
    portFor,
    true,
  );
  const httpAgent = routed(new http.Agent({ keepAlive: true }), portFor, false);
  const sent: string[] = [];
  return {
    sent,
    async sendRequest(request: PipelineRequest): Promise<PipelineResponse> {
      sent.push(`${request.method} ${request.url}`);
      const url = new URL(request.url);
      if (isLoopback(url.hostname) && options.routes[url.hostname.toLowerCase()] === undefined)
        return inner.sendRequest(request);
      portFor(url.hostname); // refuse an unrouted host here, with its name, not deep inside a socket
      request.agent = url.protocol === "https:" ? httpsAgent : httpAgent;
      return inner.sendRequest(request);
    },
    close() {
      httpsAgent.destroy();
      httpAgent.destroy();
    },
  };
}

/** The domain of real Managed HSM host names. */
export const HSM_DOMAIN = "managedhsm.azure.net";

/**
 * `https://<name>.managedhsm.azure.net` for each emulator (served over HTTPS with a certificate from
 * `ca`), and one transport that reaches each of them there; `extraRoutes` adds other host names.
 */
export function hsmRealNames(
  emulators: readonly { readonly name: string; readonly port: number }[],
  ca: string,
  extraRoutes: Readonly<Record<string, number>> = {},
): { urls: string[]; transport: LoopbackTransport } {
  const routes: Record<string, number> = { ...extraRoutes };
  for (const emulator of emulators) routes[`${emulator.name}.${HSM_DOMAIN}`] = emulator.port;
  return {
    urls: emulators.map((e) => `https://${e.name}.${HSM_DOMAIN}`),
    transport: createLoopbackTransport({ routes, ca }),
  };
}
