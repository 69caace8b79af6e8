using System.Collections.Concurrent;

namespace NbdPowerShell.Engine.Kernel;

/// <summary>
/// The TLS relays of this process, by nbd device index (one per connection). Relays leave on their own when
/// they stop; disconnecting a device or unloading the module stops its relays.
/// </summary>
public static class TlsRelayRegistry
{
    private static readonly ConcurrentDictionary<int, IReadOnlyList<TlsRelay>> Relays = new();

    internal static void Register(int index, IReadOnlyList<TlsRelay> relays)
    {
        Relays[index] = relays;
        foreach (var relay in relays)
        {
            _ = relay.Completion.ContinueWith(_ =>
            {
                if (Relays.TryGetValue(index, out var current) && ReferenceEquals(current, relays) && relays.All(r => !r.IsRunning))
                    Relays.TryRemove(new KeyValuePair<int, IReadOnlyList<TlsRelay>>(index, relays));
            }, TaskScheduler.Default);
        }
    }

    /// <summary>True while this process relays TLS for /dev/nbd<paramref name="index"/>.</summary>
    public static bool IsRelayed(int index) => Relays.TryGetValue(index, out var relays) && relays.Any(r => r.IsRunning);

    /// <summary>Devices with a running relay.</summary>
    public static IReadOnlyList<int> Devices => Relays.Where(p => p.Value.Any(r => r.IsRunning)).Select(p => p.Key).Order().ToArray();

    public static IReadOnlyList<TlsRelay> Get(int index) => Relays.TryGetValue(index, out var relays) ? relays : [];

    /// <summary>Stops the relays of one device, giving them <paramref name="grace"/> to finish on their own first.</summary>
    public static async Task StopAsync(int index, TimeSpan grace)
    {
        if (!Relays.TryRemove(index, out var relays)) return;
        await Task.WhenAll(relays.Select(r => r.StopAsync(grace))).ConfigureAwait(false);
    }

    /// <summary>Stops every relay (module unload); returns the device indexes that had one running.</summary>
    public static IReadOnlyList<int> StopAll()
    {
        var stopped = new List<int>();
        foreach (int index in Relays.Keys.ToArray())
        {
            if (!Relays.TryRemove(index, out var relays)) continue;
            if (relays.Any(r => r.IsRunning)) stopped.Add(index);
            foreach (var r in relays) r.Stop();
        }
        stopped.Sort();
        return stopped;
    }
}
