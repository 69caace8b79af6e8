using System.Reflection;
using System.Runtime.InteropServices;

namespace NbdPowerShell.Module.Tests;

/// <summary>
/// The module as built into out/NbdPowerShell, loaded for inspection only (MetadataLoadContext: nothing runs,
/// so the reference System.Management.Automation from PowerShellStandard is enough).
/// </summary>
public sealed class BuiltModule : IDisposable
{
    private readonly MetadataLoadContext _context;

    public BuiltModule()
    {
        RepoRoot = FindRepoRoot();
        ModuleDir = Path.Combine(RepoRoot, "out", "NbdPowerShell");
        string dll = Path.Combine(ModuleDir, "NbdPowerShell.dll");
        if (!File.Exists(dll))
            throw new InvalidOperationException($"{dll} is missing: build src/NbdPowerShell first (dotnet build NbdPowerShell.sln -c Release).");
        var paths = Directory.GetFiles(RuntimeEnvironment.GetRuntimeDirectory(), "*.dll")
            .Concat(Directory.GetFiles(ModuleDir, "*.dll"))
            .Append(Path.Combine(AppContext.BaseDirectory, "sma-ref", "System.Management.Automation.dll"));
        _context = new MetadataLoadContext(new PathAssemblyResolver(paths));
        Assembly = _context.LoadFromAssemblyPath(dll);
        Cmdlets = Assembly.GetTypes()
            .Where(t => !t.IsAbstract && Attribute(t, "CmdletAttribute") is not null)
            .ToDictionary(CmdletName, t => t, StringComparer.OrdinalIgnoreCase);
    }

    public string RepoRoot { get; }
    public string ModuleDir { get; }
    public Assembly Assembly { get; }
    public IReadOnlyDictionary<string, Type> Cmdlets { get; }

    public static string FindRepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "NbdPowerShell.sln")))
            dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("NbdPowerShell.sln not found above " + AppContext.BaseDirectory);
    }

    public static CustomAttributeData? Attribute(MemberInfo member, string name) =>
        member.GetCustomAttributesData().FirstOrDefault(a => a.AttributeType.Name == name);

    public static IEnumerable<CustomAttributeData> Attributes(MemberInfo member, string name) =>
        member.GetCustomAttributesData().Where(a => a.AttributeType.Name == name);

    public static object? Named(CustomAttributeData attribute, string name) =>
        attribute.NamedArguments.FirstOrDefault(a => a.MemberName == name) is { MemberInfo: not null } arg ? arg.TypedValue.Value : null;

    public static string CmdletName(Type type)
    {
        var a = Attribute(type, "CmdletAttribute")!;
        return $"{a.ConstructorArguments[0].Value}-{a.ConstructorArguments[1].Value}";
    }

    /// <summary>A cmdlet's parameters: properties with [Parameter], one entry per [Parameter] attribute (set).</summary>
    public static IEnumerable<ParameterInfoRow> Parameters(Type cmdlet) =>
        cmdlet.GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .SelectMany(p => Attributes(p, "ParameterAttribute").Select(a => new ParameterInfoRow(
                p.Name,
                TypeName(p.PropertyType),
                (string?)Named(a, "ParameterSetName") ?? "__AllParameterSets",
                (bool?)Named(a, "Mandatory") ?? false,
                Named(a, "Position") is int pos ? pos : null,
                (bool?)Named(a, "ValueFromPipeline") ?? false,
                (bool?)Named(a, "ValueFromPipelineByPropertyName") ?? false,
                Aliases(p),
                p)));

    public static string[] Aliases(PropertyInfo p) =>
        Attributes(p, "AliasAttribute").SelectMany(a => a.ConstructorArguments[0].Value is IEnumerable<CustomAttributeTypedArgument> list
            ? list.Select(v => (string)v.Value!) : []).ToArray();

    public static string TypeName(Type t) =>
        Nullable.GetUnderlyingType(t) is { } u ? TypeName(u) : t.Name;

    public void Dispose() => _context.Dispose();
}

public sealed record ParameterInfoRow(string Name, string Type, string Set, bool Mandatory, int? Position, bool ByValue, bool ByPropertyName, string[] Aliases, PropertyInfo Property);
