namespace NbdPowerShell.Engine.Storage;

/// <summary>
/// A store backed by one file descriptor whose pages the server may splice to the socket, so data
/// goes from the page cache to the socket without a copy into user space. Bytes at or past the
/// file's end read as zeroes (splicing stops there; the sender fills in). The descriptor is valid
/// until the store is disposed, which the server does only after every connection to it closed.
/// </summary>
internal interface IFileDescriptorStore
{
    int Descriptor { get; }
}
