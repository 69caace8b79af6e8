using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>An ILogger that writes to the test's output (shown for failed tests and with detailed loggers) and keeps the lines.</summary>
internal sealed class TestOutputLogger(ITestOutputHelper output, LogLevel minimum = LogLevel.Debug) : ILogger
{
    private readonly List<string> _lines = new();

    public IReadOnlyList<string> Lines
    {
        get { lock (_lines) return _lines.ToArray(); }
    }

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= minimum;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (logLevel < minimum) return;
        string line = $"{DateTime.UtcNow:HH:mm:ss.fff} {logLevel}: {formatter(state, exception)}{(exception is null ? "" : " " + exception)}";
        lock (_lines) _lines.Add(line);
        try { output.WriteLine(line); }
        catch (InvalidOperationException) { } // the test has already finished
    }
}
