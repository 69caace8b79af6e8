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
        if ((flags & NbdCommandFlags.NoHole) != 0 && command != NbdCommand.WriteZeroes)
            return NbdError.Invalid;
        if ((flags & NbdCommandFlags.FastZero) != 0 &&
            (command != NbdCommand.WriteZeroes || (exportFlags & TransmissionFlags.SendFastZero) == 0))
            return NbdError.Invalid;
        if ((flags & NbdCommandFlags.DontFragment) != 0 && (command != NbdCommand.Read || !structuredReplies))
            return NbdError.Invalid;
        if ((flags & NbdCommandFlags.ReqOne) != 0 && command != NbdCommand.BlockStatus)
            return NbdError.Invalid;
        if ((flags & NbdCommandFlags.Fua) != 0 && (exportFlags & TransmissionFlags.SendFua) == 0)
            return NbdError.Invalid;

        bool readOnly = (exportFlags & TransmissionFlags.ReadOnly) != 0;
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
            case NbdCommand.Flush when (exportFlags & TransmissionFlags.SendFlush) == 0:
            case NbdCommand.Trim when (exportFlags & TransmissionFlags.SendTrim) == 0:
            case NbdCommand.WriteZeroes when (exportFlags & TransmissionFlags.SendWriteZeroes) == 0:
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
