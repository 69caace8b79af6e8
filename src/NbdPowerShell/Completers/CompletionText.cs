using System.Management.Automation;

namespace NbdPowerShell.Completers;

/// <summary>Shared filtering and quoting for the completers.</summary>
internal static class CompletionText
{
    /// <summary>Values starting with the typed word (quotes stripped, case-insensitive), quoted when needed.</summary>
    public static IEnumerable<CompletionResult> Complete(IEnumerable<(string Value, string ToolTip)> values, string wordToComplete)
    {
        string word = (wordToComplete ?? "").Trim('\'', '"');
        var pattern = new WildcardPattern(word + "*", WildcardOptions.IgnoreCase);
        foreach (var (value, toolTip) in values)
        {
            if (!pattern.IsMatch(value))
                continue;
            yield return new CompletionResult(Quote(value), value, CompletionResultType.ParameterValue, string.IsNullOrEmpty(toolTip) ? value : toolTip);
        }
    }

    /// <summary>Single-quotes values a shell would split or expand (spaces, $, quotes, ...).</summary>
    public static string Quote(string value)
    {
        if (value.Length > 0 && value.All(c => char.IsLetterOrDigit(c) || c is '-' or '_' or '.' or '/' or ':'))
            return value;
        return "'" + value.Replace("'", "''") + "'";
    }
}
