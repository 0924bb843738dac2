/** The HSM client's own view of a job, shared by the poller, the errors and the operations. */
export type Delay = (ms: number, signal?: AbortSignal) => Promise<void>;
export type OperationKind = "backup" | "restore" | "selectiveKeyRestore" | "preBackup" | "preRestore";
export type OperationStatus = "InProgress" | "Succeeded" | "Failed" | "Canceled";

export interface HsmOperationState {
  readonly kind: OperationKind;
  readonly jobId: string;
  readonly status: OperationStatus;
  readonly statusDetails?: string;
  /** Present only when the service filled it in: an all-null error object means nothing. */
  readonly error?: { readonly code?: string; readonly message?: string };
  readonly startTime?: Date;
  readonly endTime?: Date;
  /** Backup only: the folder the HSM created, once Succeeded. */
  readonly folderUri?: string;
}

/** Managed HSM job ids are hex strings (32 digits in every recording); anything else is refused at the edge. */
export const JOB_ID = /^[0-9A-Za-z]{1,64}$/;

export interface BeginOptions {
  readonly abortSignal?: AbortSignal;
  /**
   * Attempts for a start call the HSM throttles (429/503); default maxStartAttempts. An HTTP handler
   * passes 1: it answers the person at once rather than sleeping.
   */
  readonly maxAttempts?: number;
}

export interface PollUntilDoneOptions {
  readonly abortSignal?: AbortSignal;
  /** Called after every status read, e.g. to show progress. */
  readonly onProgress?: (state: HsmOperationState) => void;
  /**
   * When to stop waiting. Status reads that fail or answer nonsense do not end the wait before it:
   * the job may still be running, and a later read may tell. Default: wait without a deadline.
   */
  readonly deadline?: Date;
}

/** One started job, followed to its end. */
export interface HsmOperation {
  readonly kind: OperationKind;
  readonly jobId: string;
  /** The last state read, if any. */
  getOperationState(): HsmOperationState | undefined;
  /**
   * Resolves with the final state when the job Succeeded.
   * @throws HsmJobFailedError (Failed, Canceled), HsmWaitDeadlineError, or the abort reason.
   */
  pollUntilDone(options?: PollUntilDoneOptions): Promise<HsmOperationState>;
}

/**
 * What the app's operations need from a Managed HSM: the app's own ManagedHsmBackupClient implements
 * it, and so can @azure/keyvault-admin's KeyVaultBackupClient through the small adapter in
 * keyvault-admin-adapter.ts. A begin call without a SAS token asks the HSM to use its own identity.
 * Failures are the errors of errors.ts (HsmRequestError, HsmInvalidResponseError, ...).
 */
export interface HsmBackupOperations {
  beginBackup(blobStorageUri: string, sasToken: string, options?: BeginOptions): Promise<HsmOperation>;
  beginBackup(blobStorageUri: string, options?: BeginOptions): Promise<HsmOperation>;
  beginRestore(folderUri: string, sasToken: string, options?: BeginOptions): Promise<HsmOperation>;
  beginRestore(folderUri: string, options?: BeginOptions): Promise<HsmOperation>;
  beginSelectiveKeyRestore(
    keyName: string,
    folderUri: string,
    sasToken: string,
    options?: BeginOptions,
  ): Promise<HsmOperation>;
  beginSelectiveKeyRestore(keyName: string, folderUri: string, options?: BeginOptions): Promise<HsmOperation>;
  /** The HSM's own check that a backup into this container could run (api-version 7.6+). */
  beginPreBackup(blobStorageUri: string, sasToken: string, options?: BeginOptions): Promise<HsmOperation>;
  beginPreBackup(blobStorageUri: string, options?: BeginOptions): Promise<HsmOperation>;
  beginPreRestore(folderUri: string, sasToken: string, options?: BeginOptions): Promise<HsmOperation>;
  beginPreRestore(folderUri: string, options?: BeginOptions): Promise<HsmOperation>;
  /** One status read, no waiting; Failed/Canceled are returned, not thrown. */
  getOperationStatus(kind: OperationKind, jobId: string, options?: BeginOptions): Promise<HsmOperationState>;
  /** Follows a job someone else started, from its job id alone. */
  resumeOperation(kind: OperationKind, jobId: string): HsmOperation;
}
