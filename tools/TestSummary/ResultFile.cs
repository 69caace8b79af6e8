using System.Xml;
using System.Xml.Linq;

namespace NbdPowerShell.TestSummary;

/// <summary>What one result file says. <see cref="Problem"/> is set when the file could not be used at all.</summary>
internal sealed record ResultCounts(int Passed, int Failed, int Skipped, IReadOnlyList<string> FailedTests, string? Problem = null)
{
    public static ResultCounts Unusable(string problem) => new(0, 1, 0, [], problem);
}

/// <summary>Counts test cases in the result formats our runners write, recognised by their root element.</summary>
internal static class ResultFile
{
    public static ResultCounts Read(string path)
    {
        if (!File.Exists(path)) return ResultCounts.Unusable("missing");
        XDocument doc;
        try
        {
            doc = XDocument.Load(path);
        }
        catch (Exception e) when (e is XmlException or IOException or UnauthorizedAccessException)
        {
            return ResultCounts.Unusable($"unreadable ({e.Message})");
        }
        XElement root = doc.Root!;
        return root.Name.LocalName switch
        {
            "TestRun" => ReadTrx(root),
            "test-results" => ReadNUnit(root, passed: ["Success"], skipped: ["Ignored", "Skipped", "NotRunnable", "Inconclusive"]),
            "test-run" => ReadNUnit(root, passed: ["Passed"], skipped: ["Skipped", "Inconclusive"]),
            "testsuites" or "testsuite" => ReadJUnit(root),
            _ => ResultCounts.Unusable($"unknown result format (root element {root.Name.LocalName})"),
        };
    }

    // TRX (dotnet test --logger trx): one UnitTestResult per test; NotExecuted is a skip. A run that was aborted
    // (test host crash, timeout) says so in ResultSummary and counts as one more failure.
    private static ResultCounts ReadTrx(XElement root)
    {
        XNamespace ns = root.Name.Namespace;
        int passed = 0, failed = 0, skipped = 0;
        var failedTests = new List<string>();
        foreach (XElement result in root.Descendants(ns + "UnitTestResult"))
        {
            switch ((string?)result.Attribute("outcome"))
            {
                case "Passed": passed++; break;
                case "NotExecuted": skipped++; break;
                default: failed++; failedTests.Add((string?)result.Attribute("testName") ?? "(unnamed test)"); break;
            }
        }
        // A test host that crashed or never connected leaves a RunInfo with outcome Error, and a summary that says
        // Failed although no test failed (or Aborted): one more failure, named after the first error. xunit also
        // echoes every failed test as an Error RunInfo ("[xUnit.net …] Name [FAIL]"): that one is already counted.
        string? runOutcome = (string?)root.Element(ns + "ResultSummary")?.Attribute("outcome");
        var testsFailed = new HashSet<string>(failedTests, StringComparer.Ordinal);
        string? runError = root.Descendants(ns + "RunInfo")
            .Where(info => (string?)info.Attribute("outcome") == "Error")
            .Select(info => ((string?)info.Element(ns + "Text") ?? "").Split('\n')[0].Trim())
            .FirstOrDefault(text => !IsEchoOfFailedTest(text, testsFailed));
        if (runError is not null)
        {
            failed++;
            failedTests.Add($"(test run error: {runError})");
        }
        else if (runOutcome is not ("Completed" or "Passed" or "Failed") || (runOutcome == "Failed" && failed == 0))
        {
            failed++;
            failedTests.Add($"(test run outcome: {runOutcome ?? "none"})");
        }
        return new ResultCounts(passed, failed, skipped, failedTests);
    }

    private static bool IsEchoOfFailedTest(string text, HashSet<string> failedTests)
    {
        const string marker = " [FAIL]";
        if (!text.EndsWith(marker, StringComparison.Ordinal))
            return false;
        string name = text[..^marker.Length].TrimEnd();
        int space = name.LastIndexOfAny([' ', '\t']);
        return failedTests.Contains(space < 0 ? name : name[(space + 1)..]);
    }

    // NUnit 2.5 (Pester's NUnitXml) and NUnit 3: test-case elements carry the result. A block or file that failed
    // before any of its tests ran (BeforeAll, discovery) shows up as a failed test-suite without test cases.
    private static ResultCounts ReadNUnit(XElement root, string[] passed, string[] skipped)
    {
        int p = 0, f = 0, s = 0;
        var failedTests = new List<string>();
        foreach (XElement testCase in root.Descendants("test-case"))
        {
            string result = (string?)testCase.Attribute("result") ?? "";
            if (passed.Contains(result)) p++;
            else if (skipped.Contains(result)) s++;
            else { f++; failedTests.Add((string?)testCase.Attribute("fullname") ?? (string?)testCase.Attribute("name") ?? "(unnamed test)"); }
        }
        foreach (XElement suite in root.Descendants("test-suite"))
        {
            string result = (string?)suite.Attribute("result") ?? "";
            if (result is "Failure" or "Failed" or "Error" && !suite.Descendants("test-case").Any())
            {
                f++;
                failedTests.Add($"{(string?)suite.Attribute("name") ?? "(unnamed block)"} (failed before its tests ran)");
            }
        }
        return new ResultCounts(p, f, s, failedTests);
    }

    private static ResultCounts ReadJUnit(XElement root)
    {
        int p = 0, f = 0, s = 0;
        var failedTests = new List<string>();
        foreach (XElement testCase in root.DescendantsAndSelf("testcase"))
        {
            if (testCase.Element("failure") is not null || testCase.Element("error") is not null)
            {
                f++;
                failedTests.Add($"{(string?)testCase.Attribute("classname")} {(string?)testCase.Attribute("name")}".Trim());
            }
            else if (testCase.Element("skipped") is not null) s++;
            else p++;
        }
        return new ResultCounts(p, f, s, failedTests);
    }
}
