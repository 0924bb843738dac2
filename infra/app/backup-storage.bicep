// The storage account the HSMs write their full backups to, and the catalog table the app keeps.
// Deliberately separate from the host's account: its own network rules, redundancy, lock and
// data-protection settings, and role assignments that name only the backup container and the table.

@description('Azure region of the account.')
param location string

@description('Tags for the account.')
param tags object

@description('Storage account name: 3-24 lowercase letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Replication of the backup account (main.bicep says what each one protects against).')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param skuName string

@description('Blob container the HSMs write backup folders (mhsm-<name>-<timestamp>) into.')
param containerName string

@description('Table that catalogs every backup and restore.')
param tableName string

@description('Days a deleted or overwritten backup blob, or a deleted container, can still be recovered.')
@minValue(1)
@maxValue(365)
param softDeleteRetentionDays int

@description('''Public network access to the backup account.
"Enabled": reachable from any network (still Entra ID only: shared keys are off). Required when HSM_STORAGE_AUTH is "sas", because the HSM presents the SAS from the public network.
"Disabled": only private endpoints and trusted Azure services (the HSM's user-assigned identity, with HSM_STORAGE_AUTH "managedIdentity") get in. The function app itself must then reach blob and table through private endpoints from a VNet-integrated app, which this template does not create: without them catalog writes and the health check fail.''')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string

@description('Days after which an earlier version of a backup blob (what versioning keeps when prune deletes a folder) is deleted for good, counted from when that blob was written: RETENTION_DAYS plus the soft-delete days.')
@minValue(1)
param versionRetentionDays int

@description('Put a CanNotDelete lock on the account, so that neither `azd down` nor a stray delete takes the backups with it (remove the lock first to really delete it).')
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
    // Entra ID only: the app signs user-delegation SAS tokens, the HSM's identity uses RBAC.
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      defaultAction: publicNetworkAccess == 'Enabled' ? 'Allow' : 'Deny'
      // Managed HSM is a trusted service: with the identity method it passes the firewall this way.
      bypass: 'AzureServices'
    }
    // No immutability policy: Managed HSM does not support a backup target that has one.
  }

  resource blobServices 'blobServices' = {
    name: 'default'
    properties: {
      isVersioningEnabled: true
      deleteRetentionPolicy: {
        enabled: true
        days: softDeleteRetentionDays
      }
      containerDeleteRetentionPolicy: {
        enabled: true
        days: softDeleteRetentionDays
      }
    }

    // The HSM does not create the container: a backup into a missing one fails.
    resource container 'containers' = {
      name: containerName
      properties: {
        publicAccess: 'None'
      }
    }
  }

  resource tableServices 'tableServices' = {
    name: 'default'

    resource table 'tables' = {
      name: tableName
    }
  }
}

// Versioning keeps an earlier version of every blob prune deletes; without this rule those versions
// would keep the storage prune frees. Only earlier versions in the backup container: current blobs
// (the floor, backups within the retention) are never touched by it.
resource versionCleanup 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          enabled: true
          name: 'delete-pruned-backup-versions'
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
              version: {
                delete: {
                  daysAfterCreationGreaterThan: versionRetentionDays
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

resource deleteLock 'Microsoft.Authorization/locks@2020-05-01' = if (lock) {
  name: 'keep-hsm-backups'
  scope: storage
  properties: {
    level: 'CanNotDelete'
    notes: 'Holds the Managed HSM backups and their catalog. Remove this lock only to delete the backups on purpose.'
  }
}

output id string = storage.id
output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output tableEndpoint string = storage.properties.primaryEndpoints.table
