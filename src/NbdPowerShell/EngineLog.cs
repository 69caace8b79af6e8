using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace NbdPowerShell;

/// <summary>One engine message waiting to be shown on a cmdlet's thread.</summary>
internal readonly record struct EngineMessage(LogLevel Level, string Text, DateTimeOffset Time);

/// <summary>
/// The engine's logger. Server, client and kernel code log from their own threads, where any Write* call
/// would throw; this logger only queues. Cmdlets drain the queue on the pipeline thread into
/// WriteVerbose (information) and WriteWarning (warnings and errors). The queue is bounded: when nobody
/// drains it for a long time the oldest messages are dropped. It never throws.
/// </summary>
internal sealed class EngineLog : ILogger
{
    public const int Capacity = 1000;

    private readonly ConcurrentQueue<EngineMessage> _queue = new();
    private int _dropped;

    public static EngineLog Default { get; } = new();

    public LogLevel MinimumLevel { get; set; } = LogLevel.Information;

    public int Count => _queue.Count;

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None && logLevel >= MinimumLevel;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (!IsEnabled(logLevel))
            return;
        try
        {
            string text = formatter(state, exception);
            if (exception is not null)
                text += ": " + exception.Message;
            Enqueue(logLevel, text);
        }
        catch (Exception)
        {
            // A logger on a server thread must never be the reason that thread dies.
        }
    }

    public void Enqueue(LogLevel level, string text)
    {
        _queue.Enqueue(new EngineMessage(level, text, DateTimeOffset.Now));
        while (_queue.Count > Capacity && _queue.TryDequeue(out _))
            Interlocked.Increment(ref _dropped);
    }

    /// <summary>Takes the next message; also reports how many were dropped since the last report.</summary>
    public bool TryDequeue(out EngineMessage message) => _queue.TryDequeue(out message);

    /// <summary>Messages dropped because the queue was full; resets the count.</summary>
    public int TakeDroppedCount() => Interlocked.Exchange(ref _dropped, 0);
}
