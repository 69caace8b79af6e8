// The tests exercise Linux kernel interfaces and peers; they run on Linux only.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]
