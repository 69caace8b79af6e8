using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// The checks every request passes before it reaches storage, in one place and in the order
/// nbdkit applies them (read-only, range, flags, size, advertised features), so a request with
/// several faults gets the same errno from us as from nbdkit; the libnbd strict-mode interop
/// tests compare the two case by case.
/// </summary>
internal static class RequestValidator
{
    private const NbdCommandFlags KnownFlags = NbdCommandFlags.Fua | NbdCommandFlags.NoHole |
        NbdCommandFlags.DontFragment | NbdCommandFlags.ReqOne | NbdCommandFlags.FastZero;

    public static NbdError Validate(NbdCommand command, NbdCommandFlags flags, ulong offset, uint length,
        long size, TransmissionFlags exportFlags, bool structuredReplies, bool hasMetaContext)
    {
        if ((exportFlags & TransmissionFlags.ReadOnly) != 0 &&
            command is NbdCommand.Write or NbdCommand.Trim or NbdCommand.WriteZeroes)
            return NbdError.Perm;

        switch (command)
        {
            case NbdCommand.Read:
            case NbdCommand.Write:
            case NbdCommand.Trim:
            case NbdCommand.Cache:
            case NbdCommand.WriteZeroes:
            case NbdCommand.BlockStatus:
                // Zero-length requests count as out of range, as in nbdkit. The spec leaves them
                // unspecified; an error is the one answer every client can parse (a zero-length
                // structured READ has no valid data chunk to send) and it matches nbdkit's errno.
                if (length == 0 || !InRange(offset, length, size))
                    return command is NbdCommand.Write or NbdCommand.WriteZeroes ? NbdError.NoSpace : NbdError.Invalid;
                break;
            case NbdCommand.Flush:
                if (offset != 0 || length != 0)
                    return NbdError.Invalid;
                break;
            default:
                return NbdError.Invalid;
        }

        if ((flags & ~KnownFlags) != 0)
            return NbdError.Invalid;
        if ((flags & NbdCommandFlags.NoHole) != 0 && command != NbdCommand.WriteZeroes)
            return NbdError.Invalid;
        if ((flags & NbdCommandFlags.FastZero) != 0 && command != NbdCommand.WriteZeroes)
            return NbdError.Invalid;
        if ((flags & NbdCommandFlags.DontFragment) != 0 && (command != NbdCommand.Read || !structuredReplies))
            return NbdError.Invalid;
        if ((flags & NbdCommandFlags.ReqOne) != 0 && command != NbdCommand.BlockStatus)
            return NbdError.Invalid;
        if ((flags & NbdCommandFlags.Fua) != 0 && (exportFlags & TransmissionFlags.SendFua) == 0)
            return NbdError.Invalid;

        // nbdkit answers ENOMEM here; the spec says a server SHOULD NOT return ENOMEM, and
        // nbd-server answers EINVAL.
        if (command is NbdCommand.Read or NbdCommand.Write && length > NbdLimits.MaxPayload)
            return NbdError.Invalid;

        switch (command)
        {
            case NbdCommand.Flush when (exportFlags & TransmissionFlags.SendFlush) == 0:
            case NbdCommand.Trim when (exportFlags & TransmissionFlags.SendTrim) == 0:
            case NbdCommand.WriteZeroes when (exportFlags & TransmissionFlags.SendWriteZeroes) == 0:
            case NbdCommand.BlockStatus when !structuredReplies || !hasMetaContext:
                return NbdError.Invalid;
            // nbdkit 1.32 lacks this check and aborts on an assertion instead.
            case NbdCommand.WriteZeroes when (flags & NbdCommandFlags.FastZero) != 0 &&
                                              (exportFlags & TransmissionFlags.SendFastZero) == 0:
                return NbdError.Invalid;
        }

        return NbdError.None;
    }

    /// <summary>offset + length &lt;= size without overflowing.</summary>
    public static bool InRange(ulong offset, uint length, long size) =>
        offset <= (ulong)size && length <= (ulong)size - offset;
}
