namespace NbdPowerShell.Engine.Storage;

/// <summary>
/// A run of a memory store's bytes: <see cref="Length"/> bytes at <see cref="Offset"/> of a chunk
/// that lives in pinned memory, or, when <see cref="Chunk"/> is null, a hole that reads as zeroes.
/// Holding the chunk reference keeps it alive: a trim that drops the chunk from the store while a
/// send still reads it leaves the send with the old bytes, never with freed memory.
/// </summary>
internal readonly record struct MemorySegment(byte[]? Chunk, int Offset, int Length);
