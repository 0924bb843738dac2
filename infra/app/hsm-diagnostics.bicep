// Sends one Managed HSM's audit log (every backup and restore call, among others) to the workspace.
// Deployed into the HSM's own resource group, which need not be the app's.

@description('Name of the Managed HSM (the first label of its URL).')
param hsmName string

@description('Resource id of the Log Analytics workspace that receives the logs.')
param logAnalyticsId string

@description('Name of the diagnostic setting on the HSM.')
param settingName string

resource hsm 'Microsoft.KeyVault/managedHSMs@2023-07-01' existing = {
  name: hsmName
}

resource auditToWorkspace 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: settingName
  scope: hsm
  properties: {
    workspaceId: logAnalyticsId
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
    ]
  }
}
