using System.Diagnostics;
using System.Runtime;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>
/// Warm-up for the steady-state allocation tests: "warm" means the JIT has finished with the hot path. Tiered
/// compilation first runs methods unoptimised, and unoptimised code can allocate where the optimised code does not
/// (Enum.HasFlag boxing, for one); the optimised versions are compiled in the background, and on a loaded machine
/// that comes late — after a fixed number of warm-up requests, allocation counts still showed it. So warm-up rounds
/// run until a round and the background compiler's delay after it compile nothing new.
/// </summary>
internal static class JitWarmup
{
    /// <summary>Tier-1 compiles start about 100 ms after tier-0 activity stops; wait a little longer than that.</summary>
    private static readonly TimeSpan BackgroundDelay = TimeSpan.FromMilliseconds(300);

    /// <summary>Runs <paramref name="round"/> until two rounds in a row compile no method, or <paramref name="limit"/> passes.</summary>
    public static async Task UntilQuietAsync(Func<Task> round, TimeSpan limit)
    {
        var clock = Stopwatch.StartNew();
        int quietRounds = 0;
        while (quietRounds < 2 && clock.Elapsed < limit)
        {
            long before = JitInfo.GetCompiledMethodCount();
            await round().ConfigureAwait(false);
            await Task.Delay(BackgroundDelay).ConfigureAwait(false);
            quietRounds = JitInfo.GetCompiledMethodCount() == before ? quietRounds + 1 : 0;
        }
    }

    /// <summary>The same for a synchronous round.</summary>
    public static void UntilQuiet(Action round, TimeSpan limit) =>
        UntilQuietAsync(() => { round(); return Task.CompletedTask; }, limit).GetAwaiter().GetResult();
}
