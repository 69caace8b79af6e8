using System.Text;

namespace NbdPowerShell.HelpGen;

/// <summary>
/// Reads the platyPS 0.14 markdown schema 2.0.0 (front matter; # Name; ## SYNOPSIS, SYNTAX, DESCRIPTION,
/// EXAMPLES, PARAMETERS, INPUTS, OUTPUTS, NOTES, RELATED LINKS). Reports what is missing instead of guessing.
/// </summary>
internal static class MarkdownHelpReader
{
    public static CommandHelp Read(string text, string source)
    {
        var lines = text.Replace("\r\n", "\n").Split('\n');
        int i = 0;
        if (lines.Length > 0 && lines[0].Trim() == "---")
        {
            i = 1;
            while (i < lines.Length && lines[i].Trim() != "---")
                i++;
            i++;
        }
        string? name = null;
        var sections = new List<(string Title, List<string> Lines)>();
        for (; i < lines.Length; i++)
        {
            string line = lines[i];
            if (name is null && line.StartsWith("# ", StringComparison.Ordinal))
            {
                name = line[2..].Trim();
                continue;
            }
            if (line.StartsWith("## ", StringComparison.Ordinal))
            {
                sections.Add((line[3..].Trim().ToUpperInvariant(), new List<string>()));
                continue;
            }
            if (sections.Count > 0)
                sections[^1].Lines.Add(line);
        }
        if (name is null)
            throw new FormatException($"{source}: no '# Command-Name' heading.");
        List<string> Section(string title) => sections.FirstOrDefault(s => s.Title == title).Lines ?? [];

        var synopsis = Paragraphs(Section("SYNOPSIS"));
        if (synopsis.Count == 0)
            throw new FormatException($"{source}: ## SYNOPSIS is empty.");

        var sets = Subsections(Section("SYNTAX"))
            .Select(s => s.Title.EndsWith("(Default)", StringComparison.OrdinalIgnoreCase)
                ? (s.Title[..^"(Default)".Length].Trim(), true)
                : (s.Title.Trim(), false))
            .ToList();

        var examples = Subsections(Section("EXAMPLES")).Select(s =>
        {
            var (code, rest) = SplitFirstCodeBlock(s.Lines);
            if (code is null)
                throw new FormatException($"{source}: example '{s.Title}' has no code block.");
            return new ExampleHelp(s.Title, code, Paragraphs(rest));
        }).ToList();

        var parameters = new List<ParameterHelp>();
        bool common = false;
        foreach (var (title, body) in Subsections(Section("PARAMETERS")))
        {
            if (title.Equals("CommonParameters", StringComparison.OrdinalIgnoreCase))
            {
                common = true;
                continue;
            }
            if (!title.StartsWith('-'))
                throw new FormatException($"{source}: parameter heading '{title}' does not start with '-'.");
            var (yaml, rest) = SplitFirstCodeBlock(body);
            if (yaml is null)
                throw new FormatException($"{source}: parameter {title} has no yaml block.");
            parameters.Add(ReadParameter(title[1..], yaml, Paragraphs(rest), source));
        }

        return new CommandHelp
        {
            Name = name,
            Synopsis = string.Join(" ", synopsis),
            Description = Paragraphs(Section("DESCRIPTION")),
            ParameterSets = sets,
            Examples = examples,
            Parameters = parameters,
            HasCommonParameters = common,
            Inputs = Subsections(Section("INPUTS")).Select(s => new TypeHelp(s.Title, Paragraphs(s.Lines))).ToList(),
            Outputs = Subsections(Section("OUTPUTS")).Select(s => new TypeHelp(s.Title, Paragraphs(s.Lines))).ToList(),
            Notes = Paragraphs(Section("NOTES")),
            RelatedLinks = Section("RELATED LINKS").Select(l => l.Trim()).Where(l => l.Length > 0)
                .Select(l => l.StartsWith('[') && l.IndexOf(']') > 0 ? l[1..l.IndexOf(']')] : l).ToList(),
        };
    }

    private static ParameterHelp ReadParameter(string name, string yaml, IReadOnlyList<string> description, string source)
    {
        var fields = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (var line in yaml.Split('\n'))
        {
            int colon = line.IndexOf(':');
            if (colon > 0)
                fields[line[..colon].Trim()] = line[(colon + 1)..].Trim();
        }
        string Field(string key) => fields.TryGetValue(key, out var v) ? v : throw new FormatException($"{source}: parameter -{name} has no '{key}:'.");
        static IReadOnlyList<string> List(string v) => v.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        return new ParameterHelp
        {
            Name = name,
            Description = description,
            Type = Field("Type"),
            ParameterSets = List(Field("Parameter Sets")),
            Aliases = fields.TryGetValue("Aliases", out var a) ? List(a) : [],
            AcceptedValues = fields.TryGetValue("Accepted values", out var av) ? List(av) : [],
            Required = Field("Required").StartsWith("True", StringComparison.OrdinalIgnoreCase),
            Position = Field("Position"),
            DefaultValue = Field("Default value"),
            PipelineInput = Field("Accept pipeline input"),
            Globbing = Field("Accept wildcard characters").StartsWith("True", StringComparison.OrdinalIgnoreCase),
        };
    }

    /// <summary>### subsections of a section: title and body lines.</summary>
    private static List<(string Title, List<string> Lines)> Subsections(List<string> lines)
    {
        var result = new List<(string, List<string>)>();
        bool inCode = false;
        foreach (var line in lines)
        {
            if (line.TrimStart().StartsWith("```", StringComparison.Ordinal))
                inCode = !inCode;
            if (!inCode && line.StartsWith("### ", StringComparison.Ordinal))
            {
                result.Add((line[4..].Trim(), new List<string>()));
                continue;
            }
            if (result.Count > 0)
                result[^1].Item2.Add(line);
        }
        return result;
    }

    private static (string? Code, List<string> Remainder) SplitFirstCodeBlock(List<string> lines)
    {
        var rest = new List<string>();
        var code = new StringBuilder();
        int state = 0; // 0 before, 1 inside, 2 after
        foreach (var line in lines)
        {
            bool fence = line.TrimStart().StartsWith("```", StringComparison.Ordinal);
            if (state == 0 && fence) { state = 1; continue; }
            if (state == 1 && fence) { state = 2; continue; }
            if (state == 1) code.Append(line).Append('\n');
            else rest.Add(line);
        }
        return (state == 2 ? code.ToString().TrimEnd('\n') : null, rest);
    }

    /// <summary>Text paragraphs (blank-line separated, lines joined); code blocks kept verbatim as one paragraph.</summary>
    internal static List<string> Paragraphs(IEnumerable<string> lines)
    {
        var result = new List<string>();
        var current = new List<string>();
        bool inCode = false;
        void Flush()
        {
            if (current.Count > 0)
                result.Add(inCode ? string.Join("\n", current) : string.Join(" ", current.Select(l => l.Trim())));
            current.Clear();
        }
        foreach (var line in lines)
        {
            if (line.TrimStart().StartsWith("```", StringComparison.Ordinal))
            {
                Flush();
                inCode = !inCode;
                continue;
            }
            if (inCode)
            {
                current.Add(line);
                continue;
            }
            if (line.Trim().Length == 0)
            {
                Flush();
                continue;
            }
            // Markdown list items start a new paragraph each.
            if (line.TrimStart().StartsWith("- ", StringComparison.Ordinal) && current.Count > 0)
                Flush();
            current.Add(line);
        }
        Flush();
        return result;
    }
}
