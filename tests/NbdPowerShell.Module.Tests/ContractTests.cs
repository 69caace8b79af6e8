using System.Reflection;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using Xunit;

namespace NbdPowerShell.Module.Tests;

/// <summary>The cmdlet surface is a contract: names, parameter sets, positions, pipeline binding, outputs.</summary>
public sealed class ContractTests : IClassFixture<BuiltModuleFixture>
{
    private readonly BuiltModule _m;

    public ContractTests(BuiltModuleFixture fixture) => _m = fixture.Module;

    public static readonly string[] ExpectedCmdlets =
    [
        "Start-NbdExport", "Get-NbdExport", "Stop-NbdExport", "Wait-NbdExport", "Find-NbdExport",
        "Connect-NbdDevice", "Get-NbdSession", "Disconnect-NbdDevice", "Get-NbdDevice", "Copy-NbdDisk", "Get-NbdDiskHash",
        "Get-NbdService", "Start-NbdService", "Stop-NbdService", "Install-NbdService", "Uninstall-NbdService",
    ];

    // cmdlet, parameter, set, type, mandatory, position, by value, by property name, aliases
    public static TheoryData<string, string, string, string, bool, int, bool, bool, string> Contract => new()
    {
        { "Start-NbdExport", "Path", "Path", "String", true, 0, false, true, "FullName" },
        { "Start-NbdExport", "Memory", "Memory", "SwitchParameter", true, -1, false, false, "" },
        { "Start-NbdExport", "Size", "Memory", "Int64", true, -1, false, false, "" },
        { "Start-NbdExport", "Name", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Start-NbdExport", "Description", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Start-NbdExport", "ReadOnly", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Start-NbdExport", "CopyOnWrite", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Start-NbdExport", "ListenAddress", "__AllParameterSets", "String[]", false, -1, false, false, "" },
        { "Start-NbdExport", "Force", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Start-NbdExport", "Port", "__AllParameterSets", "Int32", false, -1, false, false, "" },
        { "Start-NbdExport", "SocketPath", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Start-NbdExport", "AllowedClient", "__AllParameterSets", "String[]", false, -1, false, false, "" },
        { "Start-NbdExport", "MaxConnections", "__AllParameterSets", "Int32", false, -1, false, false, "" },
        { "Get-NbdExport", "Name", "__AllParameterSets", "String[]", false, 0, false, true, "" },
        { "Stop-NbdExport", "Name", "Name", "String[]", true, 0, false, true, "" },
        { "Stop-NbdExport", "InputObject", "InputObject", "NbdExport[]", true, -1, true, false, "" },
        { "Stop-NbdExport", "Force", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Stop-NbdExport", "PassThru", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Wait-NbdExport", "Name", "Name", "String[]", false, 0, false, true, "" },
        { "Wait-NbdExport", "InputObject", "InputObject", "NbdExport[]", true, -1, true, false, "" },
        { "Find-NbdExport", "ComputerName", "ComputerName", "String", true, 0, false, true, "Server,CN" },
        { "Find-NbdExport", "Port", "ComputerName", "Int32", false, 1, false, true, "" },
        { "Find-NbdExport", "SocketPath", "SocketPath", "String", true, -1, false, true, "" },
        { "Find-NbdExport", "Uri", "Uri", "String[]", true, -1, false, true, "" },
        { "Connect-NbdDevice", "Uri", "Uri", "String[]", true, -1, false, true, "" },
        { "Connect-NbdDevice", "ComputerName", "ComputerName", "String[]", true, 0, false, true, "Server,CN" },
        { "Connect-NbdDevice", "Port", "ComputerName", "Int32", false, -1, false, true, "" },
        { "Connect-NbdDevice", "ExportName", "ComputerName", "String", false, 1, false, true, "Name" },
        { "Connect-NbdDevice", "ExportName", "SocketPath", "String", false, 1, false, true, "Name" },
        { "Connect-NbdDevice", "SocketPath", "SocketPath", "String", true, -1, false, true, "" },
        { "Connect-NbdDevice", "InputObject", "InputObject", "PSObject", true, -1, true, false, "" },
        { "Connect-NbdDevice", "Device", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Connect-NbdDevice", "ReadOnly", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Connect-NbdDevice", "BlockSize", "__AllParameterSets", "Int32", false, -1, false, false, "" },
        { "Connect-NbdDevice", "Timeout", "__AllParameterSets", "Int32", false, -1, false, false, "" },
        { "Connect-NbdDevice", "DeadConnectionTimeout", "__AllParameterSets", "Int32", false, -1, false, false, "" },
        { "Connect-NbdDevice", "Connections", "__AllParameterSets", "Int32", false, -1, false, false, "" },
        { "Get-NbdSession", "Device", "Device", "String[]", false, 0, false, true, "Path" },
        { "Disconnect-NbdDevice", "Device", "Device", "String[]", true, 0, true, true, "Path" },
        { "Disconnect-NbdDevice", "Index", "Index", "Int32[]", true, -1, false, false, "" },
        { "Disconnect-NbdDevice", "InputObject", "InputObject", "NbdSession[]", true, -1, true, false, "" },
        { "Disconnect-NbdDevice", "Force", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Disconnect-NbdDevice", "PassThru", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Get-NbdDevice", "Device", "__AllParameterSets", "String[]", false, 0, false, true, "Path" },
        { "Start-NbdExport", "Certificate", "__AllParameterSets", "X509Certificate2", false, -1, false, false, "" },
        { "Start-NbdExport", "CertificatePath", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Start-NbdExport", "KeyPath", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Start-NbdExport", "TlsMode", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Start-NbdExport", "ClientCertificateAuthority", "__AllParameterSets", "Object[]", false, -1, false, false, "" },
        { "Start-NbdExport", "TlsOnly", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Find-NbdExport", "UseTls", "__AllParameterSets", "SwitchParameter", false, -1, false, true, "IsTls" },
        { "Find-NbdExport", "CertificateAuthority", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Find-NbdExport", "ClientCertificate", "__AllParameterSets", "X509Certificate2", false, -1, false, false, "" },
        { "Find-NbdExport", "ClientCertificatePath", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Find-NbdExport", "ClientKeyPath", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Find-NbdExport", "SkipCertificateCheck", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Connect-NbdDevice", "UseTls", "__AllParameterSets", "SwitchParameter", false, -1, false, true, "IsTls" },
        { "Connect-NbdDevice", "CertificateAuthority", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Connect-NbdDevice", "ClientCertificate", "__AllParameterSets", "X509Certificate2", false, -1, false, false, "" },
        { "Connect-NbdDevice", "ClientCertificatePath", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Connect-NbdDevice", "ClientKeyPath", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Connect-NbdDevice", "SkipCertificateCheck", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Copy-NbdDisk", "Source", "__AllParameterSets", "PSObject", true, 0, true, false, "" },
        { "Get-NbdDiskHash", "Source", "__AllParameterSets", "PSObject", true, 0, true, false, "" },
        { "Copy-NbdDisk", "Destination", "__AllParameterSets", "PSObject", true, 1, false, false, "" },
        { "Copy-NbdDisk", "Force", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Copy-NbdDisk", "SparseBlockSize", "__AllParameterSets", "Int32", false, -1, false, false, "" },
        { "Copy-NbdDisk", "Flush", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Copy-NbdDisk", "Verify", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Copy-NbdDisk", "Algorithm", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Get-NbdDiskHash", "Algorithm", "__AllParameterSets", "String", false, 1, false, false, "" },
        { "Copy-NbdDisk", "Connections", "__AllParameterSets", "Int32", false, -1, false, false, "" },
        { "Copy-NbdDisk", "RequestSize", "__AllParameterSets", "Int32", false, -1, false, false, "" },
        { "Copy-NbdDisk", "Timeout", "__AllParameterSets", "Int32", false, -1, false, false, "" },
        { "Copy-NbdDisk", "UseTls", "__AllParameterSets", "SwitchParameter", false, -1, false, true, "IsTls" },
        { "Copy-NbdDisk", "CertificateAuthority", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Copy-NbdDisk", "SkipCertificateCheck", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Get-NbdDiskHash", "Connections", "__AllParameterSets", "Int32", false, -1, false, false, "" },
        { "Get-NbdDiskHash", "RequestSize", "__AllParameterSets", "Int32", false, -1, false, false, "" },
        { "Get-NbdDiskHash", "Timeout", "__AllParameterSets", "Int32", false, -1, false, false, "" },
        { "Get-NbdDiskHash", "UseTls", "__AllParameterSets", "SwitchParameter", false, -1, false, true, "IsTls" },
        { "Get-NbdDiskHash", "CertificateAuthority", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Get-NbdDiskHash", "SkipCertificateCheck", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Start-NbdExport", "Persistent", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Get-NbdExport", "Scope", "__AllParameterSets", "String", false, -1, false, true, "" },
        { "Stop-NbdExport", "Scope", "Name", "String", false, -1, false, true, "" },
        { "Connect-NbdDevice", "Persistent", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Connect-NbdDevice", "NewDevice", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Connect-NbdDevice", "Driver", "__AllParameterSets", "DeviceDriver", false, -1, false, false, "" },
        { "Stop-NbdService", "Timeout", "__AllParameterSets", "Int32", false, -1, false, false, "" },
        { "Stop-NbdService", "PassThru", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Install-NbdService", "Path", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Install-NbdService", "Force", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
        { "Uninstall-NbdService", "Path", "__AllParameterSets", "String", false, -1, false, false, "" },
        { "Uninstall-NbdService", "PassThru", "__AllParameterSets", "SwitchParameter", false, -1, false, false, "" },
    };

    [Fact]
    public void ExactlyTheContractCmdletsExist() =>
        Assert.Equal(ExpectedCmdlets.Order(), _m.Cmdlets.Keys.Order());

    [Theory]
    [MemberData(nameof(Contract))]
    public void ParameterMatchesContract(string cmdlet, string name, string set, string type, bool mandatory, int position, bool byValue, bool byProperty, string aliases)
    {
        var rows = BuiltModule.Parameters(_m.Cmdlets[cmdlet]).Where(p => p.Name == name).ToList();
        Assert.NotEmpty(rows);
        var row = Assert.Single(rows, r => r.Set == set);
        Assert.Equal(type, row.Type);
        Assert.Equal(mandatory, row.Mandatory);
        Assert.Equal(position < 0 ? null : position, row.Position);
        Assert.Equal(byValue, row.ByValue);
        Assert.Equal(byProperty, row.ByPropertyName);
        Assert.Equal(aliases.Split(',', StringSplitOptions.RemoveEmptyEntries), row.Aliases);
    }

    [Theory]
    [InlineData("Start-NbdExport", "Path")]
    [InlineData("Stop-NbdExport", "Name")]
    [InlineData("Wait-NbdExport", "Name")]
    [InlineData("Find-NbdExport", "ComputerName")]
    [InlineData("Connect-NbdDevice", "ComputerName")]
    [InlineData("Get-NbdSession", "Device")]
    [InlineData("Disconnect-NbdDevice", "Device")]
    public void DefaultParameterSet(string cmdlet, string set) =>
        Assert.Equal(set, BuiltModule.Named(BuiltModule.Attribute(_m.Cmdlets[cmdlet], "CmdletAttribute")!, "DefaultParameterSetName"));

    [Theory]
    [InlineData("Start-NbdExport", "Low")]
    [InlineData("Stop-NbdExport", "Medium")]
    [InlineData("Connect-NbdDevice", "Low")]
    [InlineData("Disconnect-NbdDevice", "Medium")]
    [InlineData("Copy-NbdDisk", "Medium")]
    [InlineData("Start-NbdService", "Low")]
    [InlineData("Stop-NbdService", "Medium")]
    [InlineData("Install-NbdService", "Medium")]
    [InlineData("Uninstall-NbdService", "Medium")]
    public void ChangingCmdletsSupportShouldProcess(string cmdlet, string impact)
    {
        var a = BuiltModule.Attribute(_m.Cmdlets[cmdlet], "CmdletAttribute")!;
        Assert.Equal(true, BuiltModule.Named(a, "SupportsShouldProcess"));
        Assert.Equal(impact, Enum.GetName(typeof(ConfirmImpactMirror), (int)BuiltModule.Named(a, "ConfirmImpact")!));
    }

    private enum ConfirmImpactMirror { None, Low, Medium, High }

    [Fact]
    public void EveryCmdletDeclaresItsOutputType()
    {
        var expected = new Dictionary<string, string>
        {
            ["Start-NbdExport"] = "NbdExport", ["Get-NbdExport"] = "NbdExport", ["Stop-NbdExport"] = "NbdExport",
            ["Wait-NbdExport"] = "NbdExport", ["Find-NbdExport"] = "NbdRemoteExport", ["Connect-NbdDevice"] = "NbdSession",
            ["Get-NbdSession"] = "NbdSession", ["Disconnect-NbdDevice"] = "NbdSession", ["Get-NbdDevice"] = "NbdDevice",
            ["Copy-NbdDisk"] = "NbdCopyResult", ["Get-NbdDiskHash"] = "NbdDiskHash",
            ["Get-NbdService"] = "NbdService", ["Start-NbdService"] = "NbdService", ["Stop-NbdService"] = "NbdService",
            ["Install-NbdService"] = "NbdService", ["Uninstall-NbdService"] = "NbdService",
        };
        foreach (var (name, type) in _m.Cmdlets)
        {
            var output = BuiltModule.Attribute(type, "OutputTypeAttribute");
            Assert.True(output is not null, $"{name} has no [OutputType]");
            var types = (IEnumerable<CustomAttributeTypedArgument>)output!.ConstructorArguments[0].Value!;
            Assert.Contains(expected[name], types.Select(t => ((Type)t.Value!).Name));
        }
    }

    [Theory]
    [InlineData("NbdSession", "Disconnect-NbdDevice", "Device")]
    [InlineData("NbdSession", "Get-NbdSession", "Device")]
    [InlineData("NbdExport", "Stop-NbdExport", "Name")]
    [InlineData("NbdExport", "Get-NbdExport", "Name")]
    [InlineData("NbdRemoteExport", "Connect-NbdDevice", "ComputerName")]
    [InlineData("NbdRemoteExport", "Connect-NbdDevice", "Port")]
    [InlineData("NbdRemoteExport", "Connect-NbdDevice", "Name")]
    [InlineData("NbdRemoteExport", "Connect-NbdDevice", "Uri")]
    [InlineData("NbdExport", "Connect-NbdDevice", "Uri")]
    [InlineData("NbdSession", "Connect-NbdDevice", "Uri")]
    [InlineData("NbdRemoteExport", "Find-NbdExport", "Uri")]
    [InlineData("NbdExport", "Find-NbdExport", "Uri")]
    [InlineData("NbdSession", "Find-NbdExport", "Uri")]
    [InlineData("NbdDevice", "Get-NbdSession", "Device")]
    [InlineData("NbdExport", "Stop-NbdExport", "Scope")]
    [InlineData("NbdExport", "Get-NbdExport", "Scope")]
    public void OutputPropertiesBindByPropertyName(string outputType, string cmdlet, string property)
    {
        var type = _m.Assembly.GetType("NbdPowerShell." + outputType)!;
        Assert.NotNull(type.GetProperty(property));
        var bound = BuiltModule.Parameters(_m.Cmdlets[cmdlet]).Where(p => p.ByPropertyName && (p.Name == property || p.Aliases.Contains(property)));
        Assert.NotEmpty(bound);
    }

    [Fact]
    public void OutputTypesArePublicSealedWithContractProperties()
    {
        var expected = new Dictionary<string, string[]>
        {
            ["NbdExport"] = ["Name", "Description", "Path", "Size", "IsReadOnly", "ListenAddress", "Port", "SocketPath", "Listeners", "State", "ClientCount", "Uri", "TlsMode", "IsTlsOnly", "CertificateThumbprint", "Scope", "IsPersistent", "Changed"],
            ["NbdRemoteExport"] = ["ComputerName", "Port", "SocketPath", "Name", "Description", "Size", "IsReadOnly", "CanMultiConnection", "IsTls", "Uri"],
            ["NbdSession"] = ["Device", "Index", "ComputerName", "Port", "ExportName", "Uri", "Size", "BlockSize", "IsReadOnly", "IsConnected", "Connections", "Timeout", "MountPoints", "BackendIdentifier", "IsTls", "IsTlsRelayed", "Transport", "State", "Scope", "OwnerProcessId", "IsPersistent", "History", "ActiveUri", "ReconnectCount", "LastLossTime", "LastLossReason", "Changed", "Driver", "BackingFile", "Counters"],
            ["NbdService"] = ["IsRunning", "ProcessId", "Version", "StartTime", "Uptime", "ControlSocket", "ConfigurationPath", "LogPath", "ExportCount", "DeviceCount", "IsInstalled", "Problems", "CleanedUp", "Changed"],
            ["NbdDevice"] = ["Device", "Index", "State", "IsConnected", "Size"],
            ["NbdCopyResult"] = ["Source", "Destination", "Size", "BytesRead", "BytesWritten", "BytesSkipped", "Duration", "BytesPerSecond", "IsVerified"],
            ["NbdDiskHash"] = ["Algorithm", "Hash", "Source", "Size", "BytesRead", "BytesSkipped", "Duration"],
        };
        foreach (var (name, properties) in expected)
        {
            var type = _m.Assembly.GetType("NbdPowerShell." + name);
            Assert.True(type is { IsPublic: true, IsSealed: true }, name);
            foreach (var p in properties)
                Assert.True(type!.GetProperty(p) is not null, $"{name}.{p}");
        }
    }

    [Theory]
    [InlineData("Get-NbdExport", "Name", "ExportNameCompleter")]
    [InlineData("Stop-NbdExport", "Name", "ExportNameCompleter")]
    [InlineData("Wait-NbdExport", "Name", "ExportNameCompleter")]
    [InlineData("Connect-NbdDevice", "Device", "DeviceCompleter")]
    [InlineData("Connect-NbdDevice", "ExportName", "RemoteExportNameCompleter")]
    [InlineData("Get-NbdSession", "Device", "DeviceCompleter")]
    [InlineData("Disconnect-NbdDevice", "Device", "DeviceCompleter")]
    [InlineData("Get-NbdDevice", "Device", "DeviceCompleter")]
    public void ParametersHaveCompleters(string cmdlet, string parameter, string completer)
    {
        var property = _m.Cmdlets[cmdlet].GetProperty(parameter)!;
        var a = BuiltModule.Attribute(property, "ArgumentCompleterAttribute");
        Assert.NotNull(a);
        Assert.Equal(completer, ((Type)a!.ConstructorArguments[0].Value!).Name);
    }

    [Theory]
    [InlineData("Get-NbdExport", "Name")]
    [InlineData("Stop-NbdExport", "Name")]
    [InlineData("Get-NbdSession", "Device")]
    [InlineData("Get-NbdDevice", "Device")]
    public void WildcardParametersSayso(string cmdlet, string parameter) =>
        Assert.NotNull(BuiltModule.Attribute(_m.Cmdlets[cmdlet].GetProperty(parameter)!, "SupportsWildcardsAttribute"));
}

public sealed class BuiltModuleFixture : IDisposable
{
    public BuiltModule Module { get; } = new();

    public void Dispose() => Module.Dispose();
}
