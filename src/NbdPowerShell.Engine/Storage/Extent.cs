namespace NbdPowerShell.Engine.Storage;

[Flags]
public enum ExtentFlags
{
    /// <summary>Allocated data.</summary>
    Data = 0,
    /// <summary>Not allocated (reads as zeroes where <see cref="Zero"/> is also set).</summary>
    Hole = 1 << 0,
    /// <summary>Reads as zeroes.</summary>
    Zero = 1 << 1,
}

public readonly record struct Extent(long Length, ExtentFlags Flags);
