using System.Globalization;
using Microsoft.Extensions.Logging;

namespace NbdPowerShell.Engine.Service;

/// <summary>
/// The service's loggers: one line per message on stderr ("time level category: message"), which systemd puts in
/// the journal and an on-demand start puts in the log file of the runtime directory. Never throws.
/// </summary>
public sealed class StderrLog(LogLevel minimum = LogLevel.Information) : ILoggerFactory
{
    private static readonly object Gate = new();

    public ILogger CreateLogger(string categoryName) => new CategoryLogger(categoryName, minimum);

    public void AddProvider(ILoggerProvider provider) => throw new NotSupportedException("The service logs to stderr only.");

    public void Dispose()
    {
    }

    private sealed class CategoryLogger(string category, LogLevel minimum) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None && logLevel >= minimum;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!IsEnabled(logLevel))
                return;
            try
            {
                string text = formatter(state, exception);
                if (exception is not null)
                    text += ": " + exception;
                string line = string.Create(CultureInfo.InvariantCulture,
                    $"{DateTimeOffset.Now:yyyy-MM-ddTHH:mm:ss.fffzzz} {Level(logLevel)} {category}: {text}");
                lock (Gate)
                {
                    Console.Error.WriteLine(line);
                    Console.Error.Flush();
                }
            }
            catch (Exception)
            {
                // A full disk or a closed stderr must not take a server thread down.
            }
        }

        private static string Level(LogLevel level) => level switch
        {
            LogLevel.Trace => "trace",
            LogLevel.Debug => "debug",
            LogLevel.Information => "info",
            LogLevel.Warning => "warning",
            LogLevel.Error => "error",
            _ => "critical",
        };
    }
}
