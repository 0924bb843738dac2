import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Where Debian puts openssl; overridable for machines that keep it elsewhere. */
const OPENSSL = process.env.OPENSSL_PATH ?? "/usr/bin/openssl";

export interface SelfSignedCert {
  /** PEM certificate file, e.g. for Azurite's `--cert`. */
  readonly certPath: string;
  /** PEM private key file (unencrypted), e.g. for Azurite's `--key`. */
  readonly keyPath: string;
  /** The certificate itself as PEM: pass it as `ca` so a client trusts exactly this server. */
  readonly ca: string;
  /** The temporary directory holding both files. */
  readonly dir: string;
  /** Deletes the directory; safe to call twice. */
  remove(): void;
}

/**
 * Creates a throwaway self-signed certificate for 127.0.0.1 and localhost, valid for 2 days, in a new
 * temporary directory.
 *
 * The subjectAltName matters: Node checks the server's identity against the SAN only (not the CN), so
 * without `IP:127.0.0.1` a client that trusts the certificate still fails with
 * ERR_TLS_CERT_ALTNAME_INVALID.
 *
 * @throws if openssl is missing (names the path it looked at and `OPENSSL_PATH`) or exits non-zero
 *   (with its stderr).
 */
export function createSelfSignedCert(): SelfSignedCert {
  if (!existsSync(OPENSSL)) {
    throw new Error(
      `openssl not found at ${OPENSSL}; install it (apt-get install openssl) or set OPENSSL_PATH to its path`,
    );
  }
  const dir = mkdtempSync(join(tmpdir(), "selfsigned-"));
  const certPath = join(dir, "cert.pem");
  const keyPath = join(dir, "key.pem");
  const args = [
    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
    "-subj", "/CN=127.0.0.1",
    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    "-keyout", keyPath, "-out", certPath,
  ];
  const result = spawnSync(OPENSSL, args, { encoding: "utf8", timeout: 30_000 });
  if (result.error || result.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    const reason = result.error?.message ?? `exit code ${result.status}, signal ${result.signal}`;
    throw new Error(`${OPENSSL} ${args.join(" ")} failed (${reason}):\n${result.stderr ?? ""}`);
  }
  return {
    certPath,
    keyPath,
    ca: readFileSync(certPath, "utf8"),
    dir,
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
