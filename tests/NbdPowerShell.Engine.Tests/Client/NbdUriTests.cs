using NbdPowerShell.Engine.Client;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Client;

public class NbdUriTests
{
    [Theory]
    [InlineData("nbd://example.com/disk", "example.com", 10809, "disk")]
    [InlineData("nbd://example.com:1234/disk", "example.com", 1234, "disk")]
    [InlineData("nbd://127.0.0.1:5000/", "127.0.0.1", 5000, "")]
    [InlineData("nbd://127.0.0.1:5000", "127.0.0.1", 5000, "")]
    [InlineData("nbd://[::1]:5000/a%20b", "::1", 5000, "a b")]
    [InlineData("nbd://[fe80::1]/x", "fe80::1", 10809, "x")]
    [InlineData("nbd://host/dir/sub%2Fname", "host", 10809, "dir/sub/name")]
    [InlineData("NBD://Host/%C3%A9t%C3%A9", "Host", 10809, "été")]
    public void Parses_tcp_uris(string text, string host, int port, string export)
    {
        var uri = NbdUri.Parse(text);
        Assert.False(uri.IsUnix);
        Assert.Equal(host, uri.Host);
        Assert.Equal(port, uri.Port);
        Assert.Equal(export, uri.ExportName);
        Assert.Null(uri.SocketPath);
    }

    [Theory]
    [InlineData("nbd+unix:///disk?socket=/run/nbd.sock", "disk", "/run/nbd.sock")]
    [InlineData("nbd+unix:///?socket=/tmp/a%20b.sock", "", "/tmp/a b.sock")]
    [InlineData("nbd+unix://?socket=/tmp/s", "", "/tmp/s")]
    [InlineData("nbd+unix:///e?tls=no&socket=/s", "e", "/s")]
    public void Parses_unix_uris(string text, string export, string socket)
    {
        var uri = NbdUri.Parse(text);
        Assert.True(uri.IsUnix);
        Assert.Equal(export, uri.ExportName);
        Assert.Equal(socket, uri.SocketPath);
        Assert.Equal("nbd+unix", uri.Scheme);
    }

    [Theory]
    [InlineData("nbd://example.com/disk")]
    [InlineData("nbd://example.com:1234/disk")]
    [InlineData("nbd://[::1]:5000/a%20b")]
    [InlineData("nbd://host/dir/x%3Fy%23z%25")]
    [InlineData("nbd+unix:///disk?socket=/run/nbd.sock")]
    [InlineData("nbd+unix:///?socket=/tmp/a%26b%3D.sock")]
    [InlineData("nbds://h/e")]
    [InlineData("nbds+unix:///e?socket=/s")]
    public void Formats_back_to_the_same_text(string text) => Assert.Equal(text, NbdUri.Parse(text).ToString());

    [Theory]
    [InlineData("exp with space/and/slash?#%")]
    [InlineData("")]
    [InlineData("ünïcödé")]
    [InlineData("emoji 😀 name")]
    public void Round_trips_any_export_name(string export)
    {
        foreach (var uri in new[] { NbdUri.ForTcp("::1", 10810, export), NbdUri.ForTcp("h", exportName: export), NbdUri.ForUnix("/tmp/x y&z", export) })
            Assert.Equal(uri, NbdUri.Parse(uri.ToString()));
    }

    [Fact]
    public void Default_port_is_omitted_and_ipv6_is_bracketed()
    {
        Assert.Equal("nbd://h/e", NbdUri.ForTcp("h", 10809, "e").ToString());
        Assert.Equal("nbd://[::1]:99/e", NbdUri.ForTcp("[::1]", 99, "e").ToString());
    }

    [Theory]
    [InlineData("")]
    [InlineData("http://host/x")]
    [InlineData("nbd:/host")]
    [InlineData("nbd://host:99999/x")]
    [InlineData("nbd://host:abc/x")]
    [InlineData("nbd://::1/x")]
    [InlineData("nbd://[::1/x")]
    [InlineData("nbd+unix:///x")]
    [InlineData("nbd+unix://host/x?socket=/s")]
    [InlineData("nbd://h/%zz")]
    public void Rejects_malformed_uris(string text)
    {
        Assert.False(NbdUri.TryParse(text, out _));
        Assert.Throws<FormatException>(() => NbdUri.Parse(text));
    }
}
