using System.Xml.Linq;

namespace NbdPowerShell.HelpGen;

/// <summary>Writes MAML (the XML that Get-Help reads from en-US/&lt;Assembly&gt;.dll-Help.xml), shaped like platyPS output.</summary>
internal static class MamlWriter
{
    private static readonly XNamespace Msh = "http://msh";
    private static readonly XNamespace Maml = "http://schemas.microsoft.com/maml/2004/10";
    private static readonly XNamespace Command = "http://schemas.microsoft.com/maml/dev/command/2004/10";
    private static readonly XNamespace Dev = "http://schemas.microsoft.com/maml/dev/2004/10";

    public static XDocument Write(IEnumerable<CommandHelp> commands) =>
        new(new XDeclaration("1.0", "utf-8", null),
            new XElement(Msh + "helpItems", new XAttribute("schema", "maml"),
                commands.OrderBy(c => c.Name, StringComparer.Ordinal).Select(WriteCommand)));

    private static XElement WriteCommand(CommandHelp c)
    {
        int dash = c.Name.IndexOf('-');
        var sets = c.ParameterSets.Count > 0 ? c.ParameterSets : [("__AllParameterSets", true)];
        return new XElement(Command + "command",
            new XAttribute(XNamespace.Xmlns + "maml", Maml),
            new XAttribute(XNamespace.Xmlns + "command", Command),
            new XAttribute(XNamespace.Xmlns + "dev", Dev),
            new XElement(Command + "details",
                new XElement(Command + "name", c.Name),
                new XElement(Command + "verb", dash > 0 ? c.Name[..dash] : c.Name),
                new XElement(Command + "noun", dash > 0 ? c.Name[(dash + 1)..] : ""),
                Description(c.Synopsis)),
            Description(c.Description),
            new XElement(Command + "syntax",
                sets.Select(set => new XElement(Command + "syntaxItem",
                    new XElement(Maml + "name", c.Name),
                    c.Parameters.Where(p => c.ParameterSets.Count == 0 || p.InSet(set.Name))
                        .OrderBy(p => int.TryParse(p.Position, out int n) ? n : int.MaxValue)
                        .Select(p => Parameter(p, inSyntax: true))))),
            new XElement(Command + "parameters", c.Parameters.Select(p => Parameter(p, inSyntax: false))),
            new XElement(Command + "inputTypes", c.Inputs.Select(t => new XElement(Command + "inputType", TypeElement(t.Name), Description(t.Description)))),
            new XElement(Command + "returnValues", c.Outputs.Select(t => new XElement(Command + "returnValue", TypeElement(t.Name), Description(t.Description)))),
            new XElement(Maml + "alertSet", new XElement(Maml + "alert", Paras(c.Notes))),
            new XElement(Command + "examples", c.Examples.Select(e => new XElement(Command + "example",
                new XElement(Maml + "title", $"-------------------------- {e.Title} --------------------------"),
                new XElement(Dev + "code", e.Code),
                new XElement(Dev + "remarks", Paras(e.Remarks))))),
            new XElement(Command + "relatedLinks", c.RelatedLinks.Select(l => new XElement(Maml + "navigationLink",
                new XElement(Maml + "linkText", l), new XElement(Maml + "uri")))));
    }

    private static XElement Parameter(ParameterHelp p, bool inSyntax)
    {
        var element = new XElement(Command + "parameter",
            new XAttribute("required", p.Required ? "true" : "false"),
            new XAttribute("variableLength", p.Type.EndsWith("[]", StringComparison.Ordinal) ? "true" : "false"),
            new XAttribute("globbing", p.Globbing ? "true" : "false"),
            new XAttribute("pipelineInput", p.PipelineInput),
            new XAttribute("position", p.Position.Equals("Named", StringComparison.OrdinalIgnoreCase) ? "named" : p.Position),
            new XAttribute("aliases", p.Aliases.Count == 0 ? "none" : string.Join(", ", p.Aliases)),
            new XElement(Maml + "name", p.Name),
            Description(p.Description));
        if (p.AcceptedValues.Count > 0 && inSyntax)
        {
            element.Add(new XElement(Command + "parameterValueGroup",
                p.AcceptedValues.Select(v => new XElement(Command + "parameterValue", new XAttribute("required", "false"), new XAttribute("variableLength", "false"), v))));
        }
        if (!(inSyntax && p.IsSwitch))
        {
            element.Add(new XElement(Command + "parameterValue",
                new XAttribute("required", p.IsSwitch ? "false" : "true"),
                new XAttribute("variableLength", "false"),
                p.Type));
        }
        if (!inSyntax)
        {
            element.Add(TypeElement(p.Type));
            element.Add(new XElement(Dev + "defaultValue", p.DefaultValue));
        }
        return element;
    }

    private static XElement TypeElement(string name) =>
        new(Dev + "type", new XElement(Maml + "name", name), new XElement(Maml + "uri"));

    private static XElement Description(string text) => Description(text.Length == 0 ? [] : [text]);

    private static XElement Description(IEnumerable<string> paragraphs) => new(Maml + "description", Paras(paragraphs));

    private static IEnumerable<XElement> Paras(IEnumerable<string> paragraphs) =>
        paragraphs.Select(p => new XElement(Maml + "para", p));
}
