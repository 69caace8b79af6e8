namespace NbdPowerShell.HelpGen;

/// <summary>One cmdlet's help as platyPS markdown describes it.</summary>
internal sealed record CommandHelp
{
    public required string Name { get; init; }
    public string Synopsis { get; init; } = "";
    public IReadOnlyList<string> Description { get; init; } = [];
    /// <summary>Syntax sets in document order: name (without "(Default)") and whether it is the default.</summary>
    public IReadOnlyList<(string Name, bool IsDefault)> ParameterSets { get; init; } = [];
    public IReadOnlyList<ExampleHelp> Examples { get; init; } = [];
    public IReadOnlyList<ParameterHelp> Parameters { get; init; } = [];
    public IReadOnlyList<TypeHelp> Inputs { get; init; } = [];
    public IReadOnlyList<TypeHelp> Outputs { get; init; } = [];
    public IReadOnlyList<string> Notes { get; init; } = [];
    public IReadOnlyList<string> RelatedLinks { get; init; } = [];
    public bool HasCommonParameters { get; init; }
}

internal sealed record ExampleHelp(string Title, string Code, IReadOnlyList<string> Remarks);

internal sealed record TypeHelp(string Name, IReadOnlyList<string> Description);

internal sealed record ParameterHelp
{
    public required string Name { get; init; }
    public IReadOnlyList<string> Description { get; init; } = [];
    public string Type { get; init; } = "String";
    /// <summary>Set names, or "(All)".</summary>
    public IReadOnlyList<string> ParameterSets { get; init; } = [];
    public IReadOnlyList<string> Aliases { get; init; } = [];
    public IReadOnlyList<string> AcceptedValues { get; init; } = [];
    public bool Required { get; init; }
    public string Position { get; init; } = "Named";
    public string DefaultValue { get; init; } = "None";
    public string PipelineInput { get; init; } = "False";
    public bool Globbing { get; init; }

    public bool InSet(string set) => ParameterSets.Contains("(All)") || ParameterSets.Contains(set, StringComparer.OrdinalIgnoreCase);

    public bool IsSwitch => Type is "SwitchParameter" or "System.Management.Automation.SwitchParameter";
}
