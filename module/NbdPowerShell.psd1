@{
    RootModule             = 'NbdPowerShell.psm1'
    NestedModules          = @('NbdPowerShell.dll')
    ModuleVersion          = '0.1.0'
    CompatiblePSEditions   = @('Core')
    GUID                   = '6f2b8f0e-8d1c-4a53-9a57-0c6f1b7e4d21'
    Author                 = 'NbdPowerShell contributors'
    CompanyName            = 'NbdPowerShell contributors'
    Copyright              = 'Copyright (c) 2026 NbdPowerShell contributors'
    Description            = 'Serve and attach Network Block Devices (NBD) from PowerShell on Linux: an NBD server (files, block devices, memory, copy-on-write) in the pwsh process or in a long-lived service, and kernel attach of local or remote exports as /dev/nbdN.'
    PowerShellVersion      = '7.4'
    FormatsToProcess       = @('NbdPowerShell.Format.ps1xml')
    FunctionsToExport      = @()
    CmdletsToExport        = @(
        'Start-NbdExport'
        'Get-NbdExport'
        'Stop-NbdExport'
        'Wait-NbdExport'
        'Find-NbdExport'
        'Connect-NbdDevice'
        'Get-NbdSession'
        'Disconnect-NbdDevice'
        'Get-NbdDevice'
        'Copy-NbdDisk'
        'Get-NbdDiskHash'
        'Get-NbdService'
        'Start-NbdService'
        'Stop-NbdService'
        'Install-NbdService'
        'Uninstall-NbdService'
    )
    VariablesToExport      = @()
    AliasesToExport        = @()
    PrivateData            = @{
        PSData = @{
            Tags         = @('NBD', 'Linux', 'Storage', 'BlockDevice', 'PSEdition_Core')
            LicenseUri   = 'https://opensource.org/licenses/MIT'
            ReleaseNotes = 'Start/Get/Stop/Wait/Find-NbdExport, Connect/Disconnect-NbdDevice, Get-NbdSession, Get-NbdDevice; the NbdPowerShell service for persistent exports and devices (Get/Start/Stop/Install/Uninstall-NbdService).'
        }
    }
}
