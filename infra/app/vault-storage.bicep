// The "vault": a second storage account that holds an immutable copy of every succeeded backup
// (BACKUP_COPY_CONTAINER). Managed HSM does not support a backup target with an immutability policy,
// so the policy cannot sit on the account the HSM writes to; the app copies each backup folder here
// after the backup ends. Version-level immutability with a time-based retention covers every blob
// version in the account: for `immutabilityDays` after it was written, no one — the app, a stolen
// identity, a data-plane admin — can delete or overwrite it (an overwrite only adds a version).

@description('Azure region of the account.')
param location string

@description('Tags for the account.')
param tags object

@description('Storage account name: 3-24 lowercase letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Replication: the same as the backup account.')
param skuName string

@description('Blob container the app copies backup folders into, under the same folder names.')
param containerName string

@description('Days every blob version stays undeletable and unchangeable after it was written.')
@minValue(1)
@maxValue(146000)
param immutabilityDays int

@description('''Lock the retention policy. Locked: nobody can shorten or remove it, not even a subscription Owner, and the account cannot be deleted while it holds protected copies; it cannot be undone.
Unlocked: the same protection against data-plane deletes and overwrites, but an administrator of the account (control plane) can shorten or disable the policy.''')
param immutabilityLocked bool

@description('Public network access, as on the backup account.')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string

@description('Put a CanNotDelete lock on the account, as on the backup account.')
param lock bool

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    // Entra ID only: a leaked account key cannot exist.
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      defaultAction: publicNetworkAccess == 'Enabled' ? 'Allow' : 'Deny'
      bypass: 'AzureServices'
    }
    immutableStorageWithVersioning: {
      enabled: true
      immutabilityPolicy: {
        immutabilityPeriodSinceCreationInDays: immutabilityDays
        state: immutabilityLocked ? 'Locked' : 'Unlocked'
        allowProtectedAppendWrites: false
      }
    }
  }

  resource blobServices 'blobServices' = {
    name: 'default'
    properties: {
      // Version-level immutability protects versions: versioning must be on.
      isVersioningEnabled: true
    }

    resource container 'containers' = {
      name: containerName
      properties: {
        publicAccess: 'None'
      }
    }
  }

  // Copies are kept exactly as long as they are protected: once a version is older than the policy,
  // lifecycle management deletes it (a delete of a still-protected version would be refused anyway).
  // Prune leaves this account alone; this rule is its retention.
  resource lifecycle 'managementPolicies' = {
    name: 'default'
    properties: {
      policy: {
        rules: [
          {
            name: 'delete-expired-copies'
            enabled: true
            type: 'Lifecycle'
            definition: {
              filters: {
                blobTypes: [
                  'blockBlob'
                ]
                prefixMatch: [
                  '${containerName}/'
                ]
              }
              actions: {
                baseBlob: {
                  delete: {
                    daysAfterCreationGreaterThan: immutabilityDays
                  }
                }
                version: {
                  delete: {
                    daysAfterCreationGreaterThan: immutabilityDays
                  }
                }
              }
            }
          }
        ]
      }
    }
    dependsOn: [
      storage::blobServices
    ]
  }
}

resource deleteLock 'Microsoft.Authorization/locks@2020-05-01' = if (lock) {
  name: 'keep-hsm-backup-copies'
  scope: storage
  properties: {
    level: 'CanNotDelete'
    notes: 'Holds the immutable copies of the Managed HSM backups. Remove this lock only to delete them on purpose.'
  }
}

output id string = storage.id
output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
