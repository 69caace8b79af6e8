. (Join-Path $PSScriptRoot 'common.ps1')

# The module as a user gets it: packed by build.ps1 -Task Package, installed with Install-PSResource from a
# temporary local repository, imported by name. The install runs in a child pwsh whose HOME and XDG folders are a
# temporary directory, so the repository registration and the installed module live there; the child removes
# both, and the test checks that nothing of it reached this user's own module folder or repository list.
Describe 'Installed module package' {
    BeforeAll {
        $script:repoRoot = Split-Path $PSScriptRoot -Parent
        $script:userHome = Join-Path $TestDrive 'home'
        $script:feed = Join-Path $TestDrive 'feed'
        $environment = @{
            HOME            = $userHome
            XDG_CONFIG_HOME = Join-Path $userHome '.config'
            XDG_DATA_HOME   = Join-Path $userHome '.local/share'
            XDG_CACHE_HOME  = Join-Path $userHome '.cache'
            # Let the child derive its module path from its own HOME, not inherit this process's.
            PSModulePath    = $null
        }
        # .NET reports a special folder that does not exist as "", and PSResourceGet would then keep its
        # repository list relative to the working directory: the folders must exist before the child starts.
        $null = New-Item -ItemType Directory -Force $feed, $environment.XDG_CONFIG_HOME, $environment.XDG_DATA_HOME, $environment.XDG_CACHE_HOME

        # Where PSResourceGet keeps CurrentUser installs and repository registrations for this user (Linux).
        $data = [Environment]::GetFolderPath('LocalApplicationData', 'DoNotVerify')
        $script:realModuleDir = Join-Path $data 'powershell/Modules/NbdPowerShell'
        $script:realRepositoryFile = Join-Path $data 'PSResourceGet/PSResourceRepository.xml'
        $script:hadModuleBefore = Test-Path $realModuleDir

        # A build of the whole solution and a pack: minutes on a loaded 2-core machine, so only a hang trips this.
        $pack = Invoke-ChildPwsh -ArgumentList '-File', (Join-Path $repoRoot 'build.ps1'), '-Task', 'Package' -TimeoutSeconds 1800 -WorkingDirectory $repoRoot
        if ($pack.ExitCode) { throw "build.ps1 -Task Package failed ($($pack.ExitCode)):`n$($pack.Output)" }
        $script:version = (Import-PowerShellDataFile (Join-Path $repoRoot 'out/NbdPowerShell/NbdPowerShell.psd1')).ModuleVersion
        $nupkg = Join-Path $repoRoot "out/packages/NbdPowerShell.$version.nupkg"
        Copy-Item $nupkg $feed

        $resultFile = Join-Path $TestDrive 'installed.json'
        $child = {
            param($Feed, $ResultFile)
            $ErrorActionPreference = 'Stop'
            Register-PSResourceRepository -Name NbdPowerShellTestFeed -Uri $Feed -Trusted
            Install-PSResource -Name NbdPowerShell -Repository NbdPowerShellTestFeed -Scope CurrentUser -TrustRepository -Quiet
            $registered = @(Get-PSResourceRepository -Name NbdPowerShellTestFeed).Count
            $store = Join-Path ([Environment]::GetFolderPath('LocalApplicationData')) 'PSResourceGet/PSResourceRepository.xml'
            $storeHasFeed = (Get-Content -Raw $store) -match 'NbdPowerShellTestFeed'
            $installed = Get-InstalledPSResource -Name NbdPowerShell

            Import-Module NbdPowerShell
            $module = Get-Module NbdPowerShell
            $manifest = Import-PowerShellDataFile (Join-Path $module.ModuleBase 'NbdPowerShell.psd1')
            $cmdlets = @(Get-Command -Module NbdPowerShell -CommandType Cmdlet).Name
            $help = foreach ($name in $cmdlets) {
                $h = Get-Help $name -Full
                [pscustomobject]@{ Name = $name; Synopsis = "$($h.Synopsis)".Trim(); Examples = @($h.Examples.Example).Count }
            }
            $about = Get-Help about_NbdPowerShell | Out-String
            $aboutFile = Get-Content -Raw (Join-Path $module.ModuleBase 'en-US/about_NbdPowerShell.help.txt')
            Remove-Module NbdPowerShell

            Uninstall-PSResource -Name NbdPowerShell -Scope CurrentUser
            Unregister-PSResourceRepository -Name NbdPowerShellTestFeed
            [pscustomobject]@{
                Registered        = $registered
                RepositoryStore   = $store
                StoreHadFeed      = $storeHasFeed
                InstalledVersion  = "$($installed.Version)"
                InstalledLocation = $installed.InstalledLocation
                ModuleBase        = $module.ModuleBase
                ManifestCmdlets   = @($manifest.CmdletsToExport)
                Cmdlets           = $cmdlets
                Help              = @($help)
                About             = $about
                AboutFile         = $aboutFile
                LeftInstalled     = @(Get-InstalledPSResource -Name NbdPowerShell -ErrorAction SilentlyContinue).Count
                LeftRegistered    = @(Get-PSResourceRepository -Name NbdPowerShellTestFeed -ErrorAction SilentlyContinue).Count
                LeftAvailable     = @(Get-Module -ListAvailable NbdPowerShell).Count
            } | ConvertTo-Json -Depth 5 | Set-Content -Path $ResultFile
        }
        $run = Invoke-ChildPwsh -ArgumentList '-Command', "& { $child } '$feed' '$resultFile'" -Environment $environment -TimeoutSeconds 600
        if ($run.ExitCode -or -not (Test-Path $resultFile)) { throw "installing the package failed ($($run.ExitCode)):`n$($run.Output)" }
        $script:installed = Get-Content -Raw $resultFile | ConvertFrom-Json
    }

    It 'installs from the local repository into the temporary user module path' {
        $installed.Registered | Should -Be 1
        $installed.RepositoryStore | Should -BeLike "$userHome/*"
        $installed.StoreHadFeed | Should -BeTrue
        $installed.InstalledVersion | Should -Be $version
        $installed.InstalledLocation | Should -BeLike "$userHome/*"
        $installed.ModuleBase | Should -BeLike "$userHome/*/NbdPowerShell/$version"
    }

    It 'imports by name with exactly the cmdlets of the manifest' {
        $installed.ManifestCmdlets.Count | Should -BeGreaterThan 0
        $installed.Cmdlets.Count | Should -Be $installed.ManifestCmdlets.Count
        $installed.Cmdlets | Sort-Object | Should -Be ($installed.ManifestCmdlets | Sort-Object)
    }

    It 'has full help with a synopsis and examples for every cmdlet' {
        foreach ($h in $installed.Help) {
            $h.Synopsis | Should -Not -BeLike "$($h.Name)*" -Because "$($h.Name) needs a synopsis from the installed MAML file"
            $h.Examples | Should -BeGreaterThan 0 -Because "$($h.Name) needs examples in its installed help"
        }
    }

    It 'shows about_NbdPowerShell from the installed module' {
        $firstSentence = ($installed.AboutFile -split "`n" | Where-Object { $_ -match 'Serve and attach' } | Select-Object -First 1).Trim()
        $firstSentence | Should -Not -BeNullOrEmpty
        $installed.About | Should -Match ([regex]::Escape($firstSentence))
    }

    It 'leaves nothing installed or registered behind' {
        $installed.LeftInstalled | Should -Be 0
        $installed.LeftRegistered | Should -Be 0
        $installed.LeftAvailable | Should -Be 0
        Get-Content -Raw $installed.RepositoryStore | Should -Not -Match 'NbdPowerShellTestFeed'
        Test-Path (Join-Path $repoRoot 'PSResourceGet') | Should -BeFalse
        Get-ChildItem -Recurse -Filter 'NbdPowerShell.psd1' $userHome | Should -BeNullOrEmpty
        Test-Path $realModuleDir | Should -Be $hadModuleBefore
        if (Test-Path $realRepositoryFile) {
            Get-Content -Raw $realRepositoryFile | Should -Not -Match 'NbdPowerShellTestFeed'
        }
    }
}
