. (Join-Path $PSScriptRoot 'common.ps1')

# tools/TestSummary counts the result files behind tools/test.sh's summary line: a miscount there would let a
# failing suite look green, so it is checked on real result files of both runners and on broken ones.
Describe 'tools/TestSummary' {
    BeforeAll {
        $script:summaryDll = Join-Path (Split-Path $PSScriptRoot -Parent) 'tools/TestSummary/bin/Release/net10.0/TestSummary.dll'
        function script:Get-Summary([string[]]$Files) {
            $out = dotnet $summaryDll @Files
            $LASTEXITCODE | Should -Be 0
            $total = ($out | Where-Object { $_ -like 'TOTAL *' }) -split ' '
            [pscustomobject]@{ Passed = [int]$total[1]; Failed = [int]$total[2]; Skipped = [int]$total[3]; Text = $out -join "`n" }
        }

        # A real Pester run: one pass, one failure, one skip, and a block whose BeforeAll throws.
        $script:pesterXml = Join-Path $TestDrive 'pester.xml'
        Set-Content (Join-Path $TestDrive 'Sample.Tests.ps1') @'
Describe 'sample' {
    It 'passes' { 1 | Should -Be 1 }
    It 'fails' { 1 | Should -Be 2 }
    It 'skips' -Skip { }
}
Describe 'broken setup' {
    BeforeAll { throw 'setup failed' }
    It 'never runs' { }
}
'@
        $run = Invoke-ChildPwsh -TimeoutSeconds 300 -WorkingDirectory $TestDrive -ArgumentList '-Command', @"
Import-Module '$(Join-Path (Get-Module Pester).ModuleBase 'Pester.psd1')'
`$c = [PesterConfiguration]::Default
`$c.Run.Path = '$TestDrive/Sample.Tests.ps1'
`$c.TestResult.Enabled = `$true
`$c.TestResult.OutputFormat = 'NUnitXml'
`$c.TestResult.OutputPath = '$pesterXml'
Invoke-Pester -Configuration `$c
"@
        if (-not (Test-Path $pesterXml)) { throw "the sample Pester run wrote no result file:`n$($run.Output)" }
    }

    It 'counts a Pester NUnit file, a failed BeforeAll as a failure' {
        $s = Get-Summary $pesterXml
        $s.Passed | Should -Be 1
        $s.Failed | Should -Be 2
        $s.Skipped | Should -Be 1
        $s.Text | Should -Match 'FAILED: .*fails'
    }

    It 'counts TRX outcomes, and an aborted run as one more failure' {
        $trx = Join-Path $TestDrive 'run.trx'
        Set-Content $trx @'
<?xml version="1.0" encoding="utf-8"?>
<TestRun xmlns="http://microsoft.com/schemas/VisualStudio/TeamTest/2010">
  <Results>
    <UnitTestResult testName="A.Passes" outcome="Passed" />
    <UnitTestResult testName="A.Skips" outcome="NotExecuted" />
    <UnitTestResult testName="A.Fails" outcome="Failed" />
  </Results>
  <ResultSummary outcome="Aborted" />
</TestRun>
'@
        $s = Get-Summary $trx
        $s.Passed | Should -Be 1
        $s.Skipped | Should -Be 1
        $s.Failed | Should -Be 2
        $s.Text | Should -Match 'FAILED: A.Fails'
        $s.Text | Should -Match 'test run outcome: Aborted'
    }

    It 'counts a run whose test host never ran a test as a failure' {
        # What vstest wrote when the test host could not connect to its data collector in the emulated VM.
        $trx = Join-Path $TestDrive 'crashed.trx'
        Set-Content $trx @'
<?xml version="1.0" encoding="utf-8"?>
<TestRun xmlns="http://microsoft.com/schemas/VisualStudio/TeamTest/2010">
  <ResultSummary outcome="Failed">
    <Counters total="0" executed="0" passed="0" failed="0" />
    <RunInfos>
      <RunInfo computerName="nbdvm" outcome="Error" timestamp="2026-11-30T04:56:21Z">
        <Text>Test host process crashed : Unhandled exception.
   at somewhere</Text>
      </RunInfo>
    </RunInfos>
  </ResultSummary>
</TestRun>
'@
        $s = Get-Summary $trx
        $s.Failed | Should -Be 1
        $s.Passed | Should -Be 0
        $s.Text | Should -Match '(?m)test run error: Test host process crashed : Unhandled exception\.\)$'
    }

    It 'counts a failed xunit test once although the run also reports it as a run error' {
        # What a real run wrote (a flake hunt, 2026-11-30): xunit echoes each failed test as an Error RunInfo.
        $trx = Join-Path $TestDrive 'echo.trx'
        Set-Content $trx @'
<?xml version="1.0" encoding="utf-8"?>
<TestRun xmlns="http://microsoft.com/schemas/VisualStudio/TeamTest/2010">
  <Results>
    <UnitTestResult testName="A.Passes" outcome="Passed" />
    <UnitTestResult testName="A.Fails_under_load" outcome="Failed" />
  </Results>
  <ResultSummary outcome="Failed">
    <Counters total="2" executed="2" passed="1" failed="1" />
    <RunInfos>
      <RunInfo computerName="vm" outcome="Error" timestamp="2026-11-30T17:23:17Z">
        <Text>[xUnit.net 00:01:12.39]     A.Fails_under_load [FAIL]</Text>
      </RunInfo>
      <RunInfo computerName="vm" outcome="Warning" timestamp="2026-11-30T17:25:27Z">
        <Text>Data collector 'Blame' message: All tests finished running, Sequence file will not be generated.</Text>
      </RunInfo>
    </RunInfos>
  </ResultSummary>
</TestRun>
'@
        $s = Get-Summary $trx
        $s.Passed | Should -Be 1
        $s.Failed | Should -Be 1
        $s.Text | Should -Match 'FAILED: A.Fails_under_load'
        $s.Text | Should -Not -Match 'test run error'

        # An Error naming a test that did not fail is not an echo: it still counts.
        (Get-Content $trx -Raw).Replace('A.Fails_under_load [FAIL]', 'A.Passes [FAIL]') | Set-Content $trx
        $s = Get-Summary $trx
        $s.Failed | Should -Be 2
        $s.Text | Should -Match 'test run error: \[xUnit.net 00:01:12.39\]     A.Passes \[FAIL\]'
    }

    It 'counts a missing, an empty and an unknown file as one failure each, and adds up files' {
        $empty = Join-Path $TestDrive 'empty.xml'
        Set-Content $empty ''
        $unknown = Join-Path $TestDrive 'unknown.xml'
        Set-Content $unknown '<html />'
        $s = Get-Summary (Join-Path $TestDrive 'missing.trx'), $empty, $unknown, $pesterXml
        $s.Failed | Should -Be (3 + 2)
        $s.Passed | Should -Be 1
        $s.Text | Should -Match 'missing.trx: missing'
        $s.Text | Should -Match 'empty.xml: unreadable'
    }
}
