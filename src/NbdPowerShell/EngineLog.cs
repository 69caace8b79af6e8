using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace NbdPowerShell;

/// <summary>One engine message waiting to be shown on a cmdlet's thread.</summary>
internal readonly record struct EngineMessage(LogLevel Level, string Category, string Text, DateTimeOffset Time);

/// <summary>
/// The engine's loggers in a pwsh process. Server, client and kernel code log from their own threads, where any
/// Write* call would throw; these loggers only queue, each message with its category (the same categories the
/// service writes to stderr). Cmdlets drain the queue on the pipeline thread into WriteVerbose (information) and
/// WriteWarning (warnings and errors). The queue is bounded: when nobody drains it for a long time the oldest
/// messages are dropped. It never throws.
/// </summary>
internal sealed class EngineLog : ILoggerFactory, ILogger
{
    public const int Capacity = 1000;
    private const string DefaultCategory = "NbdPowerShell";

    private readonly ConcurrentQueue<EngineMessage> _queue = new();
    private int _dropped;

    public static EngineLog Default { get; } = new();

    public LogLevel MinimumLevel { get; set; } = LogLevel.Information;

    public int Count => _queue.Count;

    public ILogger CreateLogger(string categoryName) => new CategoryLogger(this, categoryName);

    public void AddProvider(ILoggerProvider provider) => throw new NotSupportedException("The engine log of a pwsh process only queues for the cmdlets.");

    public void Dispose()
    {
    }

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None && logLevel >= MinimumLevel;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
        Write(DefaultCategory, logLevel, state, exception, formatter);

    private void Write<TState>(string category, LogLevel logLevel, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (!IsEnabled(logLevel))
            return;
        try
        {
            string text = formatter(state, exception);
            if (exception is not null)
                text += ": " + exception.Message;
            Enqueue(logLevel, text, category);
        }
        catch (Exception)
        {
            // A logger on a server thread must never be the reason that thread dies.
        }
    }

    public void Enqueue(LogLevel level, string text, string category = DefaultCategory)
    {
        _queue.Enqueue(new EngineMessage(level, category, text, DateTimeOffset.Now));
        while (_queue.Count > Capacity && _queue.TryDequeue(out _))
            Interlocked.Increment(ref _dropped);
    }

    /// <summary>Takes the next message.</summary>
    public bool TryDequeue(out EngineMessage message) => _queue.TryDequeue(out message);

    /// <summary>Messages dropped because the queue was full; resets the count.</summary>
    public int TakeDroppedCount() => Interlocked.Exchange(ref _dropped, 0);

    private sealed class CategoryLogger(EngineLog log, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => log.IsEnabled(logLevel);

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            log.Write(category, logLevel, state, exception, formatter);
    }
}
