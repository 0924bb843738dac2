import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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
  const dir = mkdtempSync(join(tmpdir(), "selfsigned-"));
  const certPath = join(dir, "cert.pem");
  const keyPath = join(dir, "key.pem");
  openssl(dir, [
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-days",
    "2",
    "-subj",
    "/CN=127.0.0.1",
    "-addext",
    "subjectAltName=IP:127.0.0.1,DNS:localhost",
    "-keyout",
    keyPath,
    "-out",
    certPath,
  ]);
  return {
    certPath,
    keyPath,
    ca: readFileSync(certPath, "utf8"),
    dir,
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export interface TestCa {
  /** The CA certificate (PEM): the only thing a client is told to trust. */
  readonly ca: string;
  /** The server certificate (PEM) the CA issued for the requested names. */
  readonly cert: string;
  /** The server certificate's private key (PEM, unencrypted). */
  readonly key: string;
}

/**
 * Creates a throwaway certificate authority and one server certificate it signs for `dnsNames` (and
 * 127.0.0.1), valid for 2 days. Unlike a self-signed server certificate this is the shape of the
 * real chain: the client trusts a CA, and the server's certificate must name the host the client
 * asked for, so a test over it exercises the same host-name check a real `*.managedhsm.azure.net`
 * connection does. Nothing is written outside a temporary directory, which is removed before return.
 *
 * @throws like createSelfSignedCert when openssl is missing or fails.
 */
export function createTestCa(dnsNames: readonly string[]): TestCa {
  if (dnsNames.length === 0) throw new Error("createTestCa needs at least one DNS name for the server certificate");
  const dir = mkdtempSync(join(tmpdir(), "test-ca-"));
  try {
    const file = (name: string) => join(dir, name);
    // EC keys: generated in milliseconds, where RSA 2048 costs a noticeable part of a test's setup.
    const newKey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(dir, [
      "req",
      "-x509",
      ...newKey,
      "-days",
      "2",
      "-subj",
      "/CN=mhsm-backup-functions test CA",
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
      "-keyout",
      file("ca.key"),
      "-out",
      file("ca.pem"),
    ]);
    openssl(dir, [
      "req",
      ...newKey,
      "-subj",
      `/CN=${dnsNames[0]}`,
      "-keyout",
      file("server.key"),
      "-out",
      file("server.csr"),
    ]);
    const san = [...dnsNames.map((name) => `DNS:${name}`), "IP:127.0.0.1"].join(",");
    writeFileSync(
      file("server.ext"),
      `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`,
    );
    openssl(dir, [
      "x509",
      "-req",
      "-in",
      file("server.csr"),
      "-CA",
      file("ca.pem"),
      "-CAkey",
      file("ca.key"),
      "-CAcreateserial",
      "-days",
      "2",
      "-extfile",
      file("server.ext"),
      "-out",
      file("server.pem"),
    ]);
    return {
      ca: readFileSync(file("ca.pem"), "utf8"),
      cert: readFileSync(file("server.pem"), "utf8"),
      key: readFileSync(file("server.key"), "utf8"),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Runs openssl in `dir`; on failure removes `dir` and throws with the command and openssl's stderr. */
function openssl(dir: string, args: string[]): void {
  if (!existsSync(OPENSSL)) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(
      `openssl not found at ${OPENSSL}; install it (apt-get install openssl) or set OPENSSL_PATH to its path`,
    );
  }
  const result = spawnSync(OPENSSL, args, { cwd: dir, encoding: "utf8", timeout: 30_000 });
  if (result.error || result.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    const reason = result.error?.message ?? `exit code ${result.status}, signal ${result.signal}`;
    throw new Error(`${OPENSSL} ${args.join(" ")} failed (${reason}):\n${result.stderr ?? ""}`);
  }
}
