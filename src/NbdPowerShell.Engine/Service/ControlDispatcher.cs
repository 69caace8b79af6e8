using System.Text.Json;

namespace NbdPowerShell.Engine.Service;

/// <summary>Message types and their handlers, filled by the message families (Messages/*.cs).</summary>
internal sealed class ControlDispatcher
{
    private readonly Dictionary<string, (bool Changes, Func<JsonElement?, CancellationToken, Task<object?>> Handle)> _handlers = new(StringComparer.Ordinal);

    /// <summary>Registers a handler; <paramref name="changes"/> marks requests that are refused once the service is stopping.</summary>
    public void Add<TRequest, TReply>(string type, bool changes, Func<TRequest, CancellationToken, Task<TReply>> handle) =>
        _handlers[type] = (changes, async (body, ct) => await handle(Body<TRequest>(type, body), ct).ConfigureAwait(false));

    public bool TryGet(string type, out bool changes, out Func<JsonElement?, CancellationToken, Task<object?>> handle)
    {
        if (_handlers.TryGetValue(type, out var entry))
        {
            changes = entry.Changes;
            handle = entry.Handle;
            return true;
        }
        changes = false;
        handle = null!;
        return false;
    }

    public IEnumerable<string> Types => _handlers.Keys.Order(StringComparer.Ordinal);

    private static T Body<T>(string type, JsonElement? body)
    {
        if (typeof(T) == typeof(NoBody))
            return (T)(object)NoBody.Value;
        if (body is not { ValueKind: JsonValueKind.Object } element)
            throw new ControlProtocolException($"'{type}' needs a JSON object body", resync: true);
        try
        {
            return element.Deserialize<T>(ControlProtocol.Json) ?? throw new ControlProtocolException($"'{type}' has an empty body", resync: true);
        }
        catch (JsonException e)
        {
            throw new ControlProtocolException($"the body of '{type}' does not fit: {e.Message}", resync: true);
        }
    }
}

/// <summary>The body of requests that take none.</summary>
public sealed record NoBody
{
    public static NoBody Value { get; } = new();
}
