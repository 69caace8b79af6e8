using Microsoft.Extensions.Logging;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>
/// Logger for the server under test that records every error it logs ("Unexpected failure
/// serving ...", a request that threw something unexpected): hostile input may be refused, but
/// it must never reach those paths.
/// </summary>
internal sealed class CountingLogger : ILogger
{
    private readonly List<string> _errors = new();

    public IReadOnlyList<string> Errors
    {
        get { lock (_errors) return _errors.ToArray(); }
    }

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Error;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (logLevel < LogLevel.Error)
            return;
        lock (_errors)
        {
            if (_errors.Count < 50)
                _errors.Add($"{logLevel}: {formatter(state, exception)} {exception}");
        }
    }
}
