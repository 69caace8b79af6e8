using System.Text;

namespace NbdPowerShell.HelpGen;

/// <summary>Turns about_*.md into the plain-text about_*.help.txt that Get-Help about_X shows.</summary>
internal static class AboutTopicWriter
{
    public static string Convert(string markdown)
    {
        var sb = new StringBuilder();
        bool inCode = false;
        foreach (var raw in markdown.Replace("\r\n", "\n").Split('\n'))
        {
            string line = raw.TrimEnd();
            if (line.TrimStart().StartsWith("```", StringComparison.Ordinal))
            {
                inCode = !inCode;
                continue;
            }
            if (inCode)
            {
                sb.Append("        ").Append(line).Append('\n');
                continue;
            }
            if (line.StartsWith("# ", StringComparison.Ordinal))
                sb.Append("TOPIC\n    ").Append(line[2..].Trim().ToLowerInvariant()).Append('\n');
            else if (line.StartsWith("## ", StringComparison.Ordinal))
                sb.Append('\n').Append(line[3..].Trim().ToUpperInvariant()).Append('\n');
            else if (line.StartsWith("### ", StringComparison.Ordinal))
                sb.Append('\n').Append("  ").Append(line[4..].Trim()).Append('\n');
            else
                sb.Append(line.Length == 0 ? "" : "    " + line.Replace("`", "")).Append('\n');
        }
        return sb.ToString();
    }
}
