using System.Reflection;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using Xunit;

namespace NbdPowerShell.Module.Tests;

/// <summary>The manifest, format file, markdown docs and generated MAML agree with the built cmdlets.</summary>
public sealed class ModuleFileTests : IClassFixture<BuiltModuleFixture>
{
    private static readonly string[] ShouldProcessParameters = ["WhatIf", "Confirm"];
    private readonly BuiltModule _m;

    public ModuleFileTests(BuiltModuleFixture fixture) => _m = fixture.Module;

    private string Manifest => File.ReadAllText(Path.Combine(_m.ModuleDir, "NbdPowerShell.psd1"));

    private static string[] ListIn(string psd1, string key)
    {
        var m = Regex.Match(psd1, key + @"\s*=\s*@\(([^)]*)\)", RegexOptions.Singleline);
        Assert.True(m.Success, key + " missing");
        return Regex.Matches(m.Groups[1].Value, @"'([^']*)'").Select(x => x.Groups[1].Value).ToArray();
    }

    [Fact]
    public void ManifestExportsEveryCmdletExplicitly() =>
        Assert.Equal(_m.Cmdlets.Keys.Order(), ListIn(Manifest, "CmdletsToExport").Order());

    [Fact]
    public void ManifestHasTheRequiredMetadata()
    {
        string psd1 = Manifest;
        Assert.Matches(@"PowerShellVersion\s*=\s*'7\.4'", psd1);
        Assert.Equal(["Core"], ListIn(psd1, "CompatiblePSEditions"));
        Assert.Equal(["NbdPowerShell.Format.ps1xml"], ListIn(psd1, "FormatsToProcess"));
        Assert.Empty(ListIn(psd1, "FunctionsToExport"));
        Assert.Superset(new HashSet<string> { "NBD", "Linux", "Storage", "BlockDevice", "PSEdition_Core" }, ListIn(psd1, "Tags").ToHashSet());
        foreach (var file in ListIn(psd1, "NestedModules").Append("NbdPowerShell.psm1").Append("NbdPowerShell.Format.ps1xml"))
            Assert.True(File.Exists(Path.Combine(_m.ModuleDir, file)), file);
        Assert.Matches(@"ModuleVersion\s*=\s*'\d+\.\d+\.\d+'", psd1);
    }

    [Fact]
    public void ModuleFolderIsComplete()
    {
        foreach (var file in new[] { "NbdPowerShell.dll", "NbdPowerShell.Engine.dll", "Microsoft.Extensions.Logging.Abstractions.dll",
                     "en-US/NbdPowerShell.dll-Help.xml", "en-US/about_NbdPowerShell.help.txt" })
            Assert.True(File.Exists(Path.Combine(_m.ModuleDir, file)), file);
        Assert.False(File.Exists(Path.Combine(_m.ModuleDir, "System.Management.Automation.dll")), "the SMA reference assembly must not ship");
    }

    [Fact]
    public void FormatFileShowsOnlyPropertiesThatExist()
    {
        var doc = XDocument.Load(Path.Combine(_m.ModuleDir, "NbdPowerShell.Format.ps1xml"));
        var views = doc.Descendants("View").ToList();
        Assert.Equal(7, views.Count);
        foreach (var view in views)
        {
            var typeName = view.Descendants("TypeName").Select(t => t.Value).Single(t => !t.StartsWith("Deserialized.", StringComparison.Ordinal));
            var type = _m.Assembly.GetType(typeName);
            Assert.True(type is not null, $"{typeName} does not exist");
            foreach (var property in view.Descendants("PropertyName").Select(p => p.Value))
                Assert.True(type!.GetProperty(property) is not null, $"{typeName}.{property}");
            foreach (var script in view.Descendants("ScriptBlock").Select(s => s.Value))
                foreach (Match m in Regex.Matches(script, @"\$_\.(\w+)"))
                    Assert.True(type!.GetProperty(m.Groups[1].Value) is not null, $"{typeName}.{m.Groups[1].Value} (script block)");
            int headers = view.Descendants("TableColumnHeader").Count();
            int width = view.Descendants("Width").Sum(w => int.Parse(w.Value)) + headers - 1;
            Assert.True(width <= 79, $"{typeName} table is {width} columns wide");
            Assert.Equal(headers, view.Descendants("TableColumnItem").Count());
        }
    }

    [Fact]
    public void EveryCmdletHasMarkdownHelpWithEveryParameterAndTwoExamples()
    {
        foreach (var (name, type) in _m.Cmdlets)
        {
            string path = Path.Combine(_m.RepoRoot, "docs", "en-US", name + ".md");
            Assert.True(File.Exists(path), path);
            string md = File.ReadAllText(path);
            Assert.Contains("external help file: NbdPowerShell.dll-Help.xml", md);
            Assert.Contains("schema: 2.0.0", md);
            foreach (var section in new[] { "## SYNOPSIS", "## SYNTAX", "## DESCRIPTION", "## EXAMPLES", "## PARAMETERS", "## INPUTS", "## OUTPUTS", "## NOTES" })
                Assert.Contains(section, md);
            Assert.True(Regex.Matches(md, @"^### Example \d", RegexOptions.Multiline).Count >= 2, $"{name}: fewer than two examples");
            foreach (var parameter in ExpectedParameters(type))
                Assert.True(md.Contains($"### -{parameter}\n"), $"{name}.md does not document -{parameter}");
            var documented = Regex.Matches(md, @"^### -(\w+)$", RegexOptions.Multiline).Select(m => m.Groups[1].Value);
            Assert.Empty(documented.Except(ExpectedParameters(type)));
        }
        Assert.True(File.Exists(Path.Combine(_m.RepoRoot, "docs", "en-US", "about_NbdPowerShell.md")));
    }

    [Fact]
    public void GeneratedMamlHasEveryCmdletAndParameter()
    {
        XNamespace command = "http://schemas.microsoft.com/maml/dev/command/2004/10";
        XNamespace maml = "http://schemas.microsoft.com/maml/2004/10";
        var doc = XDocument.Load(Path.Combine(_m.ModuleDir, "en-US", "NbdPowerShell.dll-Help.xml"));
        Assert.Equal("helpItems", doc.Root!.Name.LocalName);
        var commands = doc.Root.Elements(command + "command").ToDictionary(c => c.Element(command + "details")!.Element(command + "name")!.Value);
        Assert.Equal(_m.Cmdlets.Keys.Order(), commands.Keys.Order());
        foreach (var (name, type) in _m.Cmdlets)
        {
            var c = commands[name];
            Assert.False(string.IsNullOrWhiteSpace(c.Element(command + "details")!.Element(maml + "description")!.Value), $"{name}: no synopsis");
            var parameters = c.Element(command + "parameters")!.Elements(command + "parameter").Select(p => p.Element(maml + "name")!.Value).ToHashSet();
            foreach (var parameter in ExpectedParameters(type))
                Assert.True(parameters.Contains(parameter), $"{name}: MAML lacks -{parameter}");
            Assert.True(c.Element(command + "examples")!.Elements(command + "example").Count() >= 2, $"{name}: MAML has fewer than two examples");
            var sets = BuiltModule.Parameters(type).Select(p => p.Set).Where(s => s != "__AllParameterSets").Distinct().Count();
            Assert.Equal(Math.Max(1, sets), c.Element(command + "syntax")!.Elements(command + "syntaxItem").Count());
            // Pipeline input and mandatory flags in the help agree with the attributes.
            foreach (var row in BuiltModule.Parameters(type).GroupBy(r => r.Name))
            {
                var p = c.Element(command + "parameters")!.Elements(command + "parameter").Single(e => e.Element(maml + "name")!.Value == row.Key);
                bool pipeline = row.Any(r => r.ByValue || r.ByPropertyName);
                Assert.Equal(pipeline, p.Attribute("pipelineInput")!.Value.StartsWith("True", StringComparison.Ordinal));
                if (row.Any(r => r.ByValue))
                    Assert.Contains("ByValue", p.Attribute("pipelineInput")!.Value);
                if (row.Any(r => r.ByPropertyName))
                    Assert.Contains("ByPropertyName", p.Attribute("pipelineInput")!.Value);
            }
        }
    }

    private static IEnumerable<string> ExpectedParameters(Type cmdlet)
    {
        var names = BuiltModule.Parameters(cmdlet).Select(p => p.Name).Distinct().ToList();
        var a = BuiltModule.Attribute(cmdlet, "CmdletAttribute")!;
        if (BuiltModule.Named(a, "SupportsShouldProcess") is true)
            names.AddRange(ShouldProcessParameters);
        return names;
    }
}
