/**
 * A local Managed HSM emulator speaking the backup/restore data-plane protocol over real HTTP, which
 * writes and reads real backup blobs in Azure Storage (Azurite) with the SAS it is handed, so SAS
 * scope, permissions and expiry are enforced by the storage emulator, not by this code.
 */
export {
  startHsmEmulator,
  type HsmEmulator,
  type HsmEmulatorFaults,
  type HsmEmulatorKeys,
  type HsmEmulatorOptions,
  type HsmEmulatorRoles,
  type RecordedRequest,
} from "./server.js";
export { HSM_RESOURCE, challengeHeader } from "./auth.js";
export { HSM_ROLES, type RoleAssignment } from "./rbac.js";
export type { DeletedKeyBundle, KeyBundle, KeyItem, KeyType } from "./keys.js";
export type {
  FaultTarget,
  FullBackupOperation,
  JobError,
  JobLogEntry,
  OperationStatus,
  RestoreOperation,
} from "./jobs.js";
export type { KeyVaultErrorDetail } from "./errors.js";
export { BACKUP_FORMAT, BACKUP_FORMAT_VERSION, MANIFEST_BLOB, MARKER_BLOB, keyBlobName } from "./storage.js";
