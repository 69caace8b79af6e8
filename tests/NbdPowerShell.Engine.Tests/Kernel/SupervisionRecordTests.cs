using NbdPowerShell.Engine.Kernel.Supervision;
using NbdPowerShell.Engine.Protocol;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Kernel;

public class SupervisionRecordTests
{
    private static SupervisionRecord Valid => new()
    {
        Index = 3,
        BackendIdentifier = "nbd://10.0.0.1/img",
        Servers = ["nbd://10.0.0.1/img", "nbd://10.0.0.2:10810/img"],
        ExportName = "img",
        Size = 1L << 30,
        TransmissionFlags = TransmissionFlags.HasFlags | TransmissionFlags.ReadOnly | TransmissionFlags.SendFlush,
        ReadOnly = true,
        Connections = 1,
        RequestTimeoutSeconds = 10,
        DeadConnectionTimeoutSeconds = 120,
        ContentFingerprint = "v1:16x4096:sha256:00",
        Tls = new SupervisionTlsFiles { CertificateAuthorityPath = "/etc/pki/ca.pem", TargetHost = "nas" },
    };

    [Fact]
    public void Json_round_trip_keeps_every_field_and_is_readable()
    {
        string json = Valid.ToJson();
        Assert.Contains("\"TransmissionFlags\": \"HasFlags, ReadOnly, SendFlush\"", json);
        Assert.Contains("\"DeadConnectionTimeoutSeconds\": 120", json);
        var back = SupervisionRecord.FromJson(json);
        Assert.Equal(Valid with { Servers = back.Servers }, back);
        Assert.Equal(Valid.Servers, back.Servers);
        Assert.Equal(Valid.Tls, back.Tls);
    }

    [Fact]
    public void A_record_missing_a_required_field_is_refused()
    {
        string json = Valid.ToJson().Replace("\"Size\": 1073741824,", "");
        var e = Assert.Throws<ArgumentException>(() => SupervisionRecord.FromJson(json));
        Assert.Contains("Size", e.Message);
        Assert.Throws<ArgumentException>(() => SupervisionRecord.FromJson("{ not json"));
        Assert.Throws<ArgumentException>(() => SupervisionRecord.FromJson("null"));
    }

    [Fact]
    public void Writable_devices_cannot_fail_over()
    {
        var e = Assert.Throws<ArgumentException>(() => (Valid with { ReadOnly = false }).Validate());
        Assert.Contains("read-only", e.Message);
        (Valid with { ReadOnly = false, Servers = ["nbd://10.0.0.1/img"] }).Validate();
    }

    [Theory]
    [InlineData("RequestTimeoutSeconds")]
    [InlineData("DeadConnectionTimeoutSeconds")]
    [InlineData("Connections")]
    [InlineData("Servers")]
    [InlineData("ExportName")]
    [InlineData("FormatVersion")]
    public void Unworkable_values_are_refused_with_the_field_named(string field)
    {
        var bad = field switch
        {
            "RequestTimeoutSeconds" => Valid with { RequestTimeoutSeconds = 0 },
            "DeadConnectionTimeoutSeconds" => Valid with { DeadConnectionTimeoutSeconds = 0 },
            "Connections" => Valid with { Connections = 2 }, // no CAN_MULTI_CONN in the flags
            "Servers" => Valid with { Servers = ["http://x/img"] },
            "ExportName" => Valid with { Servers = ["nbd://10.0.0.1/img", "nbd://10.0.0.2/other"] },
            _ => Valid with { FormatVersion = 2 },
        };
        var e = Assert.Throws<ArgumentException>(bad.Validate);
        Assert.False(string.IsNullOrWhiteSpace(e.Message));
    }

    [Fact]
    public void Attach_request_validation_matches_the_record_rules()
    {
        new SupervisedAttachRequest { Servers = ["nbd://a/x", "nbd://b/x"], ReadOnly = true }.Validate();
        Assert.Throws<ArgumentException>(() => new SupervisedAttachRequest { Servers = ["nbd://a/x", "nbd://b/x"] }.Validate());
        Assert.Throws<ArgumentException>(() => new SupervisedAttachRequest { Servers = ["nbd://a/x", "nbd://b/y"], ReadOnly = true }.Validate());
        Assert.Throws<ArgumentException>(() => new SupervisedAttachRequest { Servers = [] }.Validate());
        Assert.Throws<ArgumentException>(() => new SupervisedAttachRequest { Servers = ["nbd://a/x"], RequestTimeoutSeconds = 0 }.Validate());
    }
}
