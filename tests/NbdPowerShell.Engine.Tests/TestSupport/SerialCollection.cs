using Xunit;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>Tests that measure the whole process (allocations, memory) run alone, after the parallel ones.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SerialCollection
{
    public const string Name = "Serial (process-wide measurements)";
}
