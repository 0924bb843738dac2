/** What the test's own HTTP servers (fault proxy, hostile HSM) share: a loopback port and a prompt stop. */
import type { IncomingMessage, Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";

export interface ListeningServer {
  /** http://127.0.0.1:PORT */
  readonly origin: string;
  /** Destroys every open socket (hanging requests and idle keep-alive ones) and closes the listener. */
  close(): Promise<void>;
}

/** Listens on a free 127.0.0.1 port and tracks sockets, so close() never waits on a client. */
export async function listenOnLoopback(server: Server): Promise<ListeningServer> {
  const sockets = new Set<Socket>();
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  return {
    origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

export function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}
