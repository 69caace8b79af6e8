namespace NbdPowerShell.TestSummary;

/// <summary>
/// TestSummary FILE...: counts every result file given. A file that is missing or cannot be read counts as one
/// failure, so a suite that crashed before writing its results can never look green.
/// </summary>
internal static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length == 0)
        {
            Console.Error.WriteLine("usage: TestSummary <result file>...");
            return 2;
        }
        int passed = 0, failed = 0, skipped = 0;
        foreach (string path in args)
        {
            ResultCounts counts = ResultFile.Read(path);
            Console.WriteLine(counts.Problem is null
                ? $"  {Path.GetFileName(path)}: {counts.Passed} passed, {counts.Failed} failed, {counts.Skipped} skipped"
                : $"  {Path.GetFileName(path)}: {counts.Problem} (counted as 1 failed)");
            foreach (string name in counts.FailedTests) Console.WriteLine($"    FAILED: {name}");
            passed += counts.Passed;
            failed += counts.Failed;
            skipped += counts.Skipped;
        }
        Console.WriteLine($"TOTAL {passed} {failed} {skipped}");
        return 0;
    }
}
