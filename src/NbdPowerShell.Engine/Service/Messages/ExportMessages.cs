using NbdPowerShell.Engine.Hosting;

namespace NbdPowerShell.Engine.Service.Messages;

/// <summary>The export family: start, list, stop the service's (persistent) exports.</summary>
public static class ExportMessages
{
    public const string Start = "exports.start";
    public const string List = "exports.list";
    public const string Stop = "exports.stop";

    internal static void Register(ControlDispatcher dispatcher, ServiceHost service)
    {
        dispatcher.Add<StartExportRequest, HostResult<ExportInfo>>(Start, changes: true,
            (r, ct) => service.StartExportAsync(r.Spec, r.Replace, r.Persistent, ct));
        dispatcher.Add<NoBody, IReadOnlyList<ExportInfo>>(List, changes: false, (_, ct) => service.GetExportsAsync(ct));
        dispatcher.Add<StopExportRequest, ExportInfo>(Stop, changes: true, (r, ct) => service.StopExportAsync(r.Name, r.Force, ct));
    }
}

public sealed record StartExportRequest(ExportSpec Spec, bool Replace, bool Persistent);

public sealed record StopExportRequest(string Name, bool Force);
