using System.Diagnostics;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Hosting.Devices;
using NbdPowerShell.Engine.Service;
using NbdPowerShell.Engine.Tests.Storage;
using Xunit;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>
/// A service with private runtime and configuration directories, run in this process (to restart it, look at its
/// logs, and add device kinds) or in a child process (the bench host's "service" verb, to kill it with SIGKILL).
/// </summary>
internal sealed class TestService : IAsyncDisposable
{
    private readonly ScratchDirectory _scratch = new();
    private ServiceRuntime? _runtime;
    private Process? _process;

    public TestService()
    {
        Paths = new ServicePaths(Path.Combine(_scratch.Path, "run"), Path.Combine(_scratch.Path, "etc"));
        Client = new ServiceClient(Paths) { QueryTimeout = TimeSpan.FromSeconds(30) };
    }

    public ServicePaths Paths { get; }
    public ServiceClient Client { get; }
    public string Directory => _scratch.Path;
    public RecordingLoggers Loggers { get; } = new();
    public ServiceHost Service => _runtime?.Service ?? throw new InvalidOperationException("not running in this process");

    public async Task StartInProcessAsync(TimeSpan? idleTimeout = null, Action<DeviceRegistry>? addKinds = null)
    {
        _runtime = await ServiceRuntime.StartAsync(Paths, Loggers, CancellationToken.None, idleTimeout, addKinds)
            ?? throw new InvalidOperationException("another service holds the lock");
    }

    public async Task StopInProcessAsync()
    {
        if (_runtime is null)
            return;
        Assert.True(await _runtime.StopAsync("test"), "the in-process service did not stop within its grace time");
        _runtime = null;
    }

    /// <summary>The service in a child process (the bench host), ready when its control socket answers.</summary>
    public async Task StartProcessAsync()
    {
        var start = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        start.ArgumentList.Add(BenchHost.Locate());
        start.ArgumentList.Add("service");
        start.ArgumentList.Add(Paths.RuntimeDirectory);
        start.ArgumentList.Add(Paths.ConfigDirectory);
        _process = Process.Start(start)!;
        var log = _process.StandardError.ReadToEndAsync();
        var clock = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                if ((await Client.HelloAsync(CancellationToken.None)).ProcessId == _process.Id)
                    return;
            }
            catch (Exception e) when (e is NbdServiceNotRunningException or NbdPowerShell.Engine.Hosting.NbdHostException)
            {
            }
            if (_process.HasExited || clock.Elapsed > TimeSpan.FromSeconds(60))
                Assert.Fail($"the service process did not come up (exited: {_process.HasExited}); stderr:\n{(log.IsCompleted ? log.Result : "")}");
            await Task.Delay(100);
        }
    }

    public int ProcessId => _process?.Id ?? Environment.ProcessId;

    /// <summary>SIGKILL: nothing of the service runs after this, no flush, no close.</summary>
    public void Kill()
    {
        _process!.Kill();
        Assert.True(_process.WaitForExit(10_000), "the killed service did not exit");
    }

    /// <summary>SIGTERM, then the exit code and how long the exit took.</summary>
    public (int ExitCode, TimeSpan Took) Terminate(TimeSpan limit)
    {
        var clock = Stopwatch.StartNew();
        using (var kill = Process.Start("kill", ["-TERM", _process!.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
            kill.WaitForExit();
        Assert.True(_process.WaitForExit((int)limit.TotalMilliseconds), $"the service did not exit within {limit.TotalSeconds} s of SIGTERM");
        return (_process.ExitCode, clock.Elapsed);
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await StopInProcessAsync();
        }
        finally
        {
            if (_process is { HasExited: false })
            {
                _process.Kill();
                _process.WaitForExit(10_000);
            }
            _process?.Dispose();
            _scratch.Dispose();
        }
    }
}

/// <summary>Loggers that keep every message (for assertions) and count errors: hostile input must never reach an error path.</summary>
internal sealed class RecordingLoggers : ILoggerFactory
{
    private readonly List<(LogLevel Level, string Category, string Text)> _messages = [];

    public IReadOnlyList<(LogLevel Level, string Category, string Text)> Messages
    {
        get { lock (_messages) return _messages.ToArray(); }
    }

    public IEnumerable<string> Errors => Messages.Where(m => m.Level >= LogLevel.Error).Select(m => $"{m.Category}: {m.Text}");

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void AddProvider(ILoggerProvider provider) => throw new NotSupportedException();

    public void Dispose()
    {
    }

    private sealed class Logger(RecordingLoggers owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (owner._messages)
            {
                if (owner._messages.Count < 10_000)
                    owner._messages.Add((logLevel, category, formatter(state, exception) + (exception is null ? "" : " " + exception)));
            }
        }
    }
}
