using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// The checks every request passes before it reaches storage, in one place and in the order
/// nbdkit applies them, so each bad request gets the errno that clients and the spec expect.
/// </summary>
internal static class RequestValidator
{
    private const NbdCommandFlags KnownFlags = NbdCommandFlags.Fua | NbdCommandFlags.NoHole |
        NbdCommandFlags.DontFragment | NbdCommandFlags.ReqOne | NbdCommandFlags.FastZero;

    public static NbdError Validate(NbdCommand command, NbdCommandFlags flags, ulong offset, uint length,
        long size, TransmissionFlags exportFlags, bool structuredReplies, bool hasMetaContext)
    {
        switch (command)
        {
            case NbdCommand.Read:
            case NbdCommand.Write:
            case NbdCommand.Flush:
            case NbdCommand.Trim:
            case NbdCommand.Cache:
            case NbdCommand.WriteZeroes:
            case NbdCommand.BlockStatus:
                break;
            default:
                return NbdError.Invalid;
        }

        if ((flags & ~KnownFlags) != 0)
            return NbdError.Invalid;
        if (flags.HasFlag(NbdCommandFlags.NoHole) && command != NbdCommand.WriteZeroes)
            return NbdError.Invalid;
        if (flags.HasFlag(NbdCommandFlags.FastZero) &&
            (command != NbdCommand.WriteZeroes || !exportFlags.HasFlag(TransmissionFlags.SendFastZero)))
            return NbdError.Invalid;
        if (flags.HasFlag(NbdCommandFlags.DontFragment) && (command != NbdCommand.Read || !structuredReplies))
            return NbdError.Invalid;
        if (flags.HasFlag(NbdCommandFlags.ReqOne) && command != NbdCommand.BlockStatus)
            return NbdError.Invalid;
        if (flags.HasFlag(NbdCommandFlags.Fua) && !exportFlags.HasFlag(TransmissionFlags.SendFua))
            return NbdError.Invalid;

        bool readOnly = exportFlags.HasFlag(TransmissionFlags.ReadOnly);
        switch (command)
        {
            case NbdCommand.Write:
            case NbdCommand.Trim:
            case NbdCommand.WriteZeroes:
                if (readOnly)
                    return NbdError.Perm;
                break;
        }

        switch (command)
        {
            case NbdCommand.Flush when !exportFlags.HasFlag(TransmissionFlags.SendFlush):
            case NbdCommand.Trim when !exportFlags.HasFlag(TransmissionFlags.SendTrim):
            case NbdCommand.WriteZeroes when !exportFlags.HasFlag(TransmissionFlags.SendWriteZeroes):
            case NbdCommand.BlockStatus when !structuredReplies || !hasMetaContext:
                return NbdError.Invalid;
            case NbdCommand.Flush when offset != 0 || length != 0:
                return NbdError.Invalid;
        }

        if (command != NbdCommand.Flush && !InRange(offset, length, size))
            return command is NbdCommand.Write or NbdCommand.WriteZeroes ? NbdError.NoSpace : NbdError.Invalid;

        if (command is NbdCommand.Read or NbdCommand.Write && length > NbdLimits.MaxPayload)
            return NbdError.Invalid;

        return NbdError.None;
    }

    /// <summary>offset + length &lt;= size without overflowing.</summary>
    public static bool InRange(ulong offset, uint length, long size) =>
        offset <= (ulong)size && length <= (ulong)size - offset;
}
