using System.Xml;

namespace NbdPowerShell.HelpGen;

/// <summary>
/// HelpGen &lt;docs dir&gt; &lt;output dir&gt; &lt;help file name&gt;: converts every docs/&lt;culture&gt;/*.md
/// (platyPS schema 2.0.0) into one MAML file, and about_*.md into about_*.help.txt.
/// </summary>
internal static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length != 3)
        {
            Console.Error.WriteLine("usage: HelpGen <docs dir> <output dir> <help file name>");
            return 2;
        }
        try
        {
            Generate(args[0], args[1], args[2]);
            return 0;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"HelpGen: error: {e.Message}");
            return 1;
        }
    }

    public static void Generate(string docsDir, string outDir, string helpFileName)
    {
        Directory.CreateDirectory(outDir);
        var commands = new List<CommandHelp>();
        foreach (string file in Directory.GetFiles(docsDir, "*.md").Order(StringComparer.Ordinal))
        {
            string text = File.ReadAllText(file);
            string baseName = Path.GetFileNameWithoutExtension(file);
            if (baseName.StartsWith("about_", StringComparison.OrdinalIgnoreCase))
            {
                File.WriteAllText(Path.Combine(outDir, baseName + ".help.txt"), AboutTopicWriter.Convert(text));
                continue;
            }
            if (!baseName.Contains('-'))
                continue; // a module page, not a command
            var help = MarkdownHelpReader.Read(text, file);
            if (help.Name != baseName)
                throw new FormatException($"{file}: heading '# {help.Name}' does not match the file name.");
            commands.Add(help);
        }
        var settings = new XmlWriterSettings { Indent = true, Encoding = new System.Text.UTF8Encoding(false) };
        using var writer = XmlWriter.Create(Path.Combine(outDir, helpFileName), settings);
        MamlWriter.Write(commands).Save(writer);
    }
}
