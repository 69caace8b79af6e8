namespace NbdPowerShell.Engine.Server;

/// <summary>
/// A connection's own worker threads for blocking stores. Idle workers wait on a monitor, so a
/// hand-off costs one futex wake-up; the shared thread pool spins (sched_yield) before sleeping,
/// which on a small machine takes the CPU the reader and the client need. Threads start on
/// demand, up to a cap, and end with the connection.
/// </summary>
internal sealed class RequestWorkers
{
    private readonly Queue<NbdRequest> _queue;
    private readonly int _maxThreads;
    private readonly string _name;
    private int _threads;
    private int _idle;
    private bool _closed;

    public RequestWorkers(int maxThreads, int capacity, string name)
    {
        _maxThreads = maxThreads;
        _queue = new Queue<NbdRequest>(capacity);
        _name = name;
    }

    public void Enqueue(NbdRequest request)
    {
        bool start = false;
        lock (_queue)
        {
            _queue.Enqueue(request);
            if (_idle > _queue.Count - 1)
                Monitor.Pulse(_queue);
            else if (_threads < _maxThreads)
            {
                _threads++;
                start = true;
            }
        }
        if (start)
            new Thread(Work) { IsBackground = true, Name = $"{_name}-worker-{_threads}" }.Start();
    }

    /// <summary>Lets the workers finish what is queued and exit.</summary>
    public void Close()
    {
        lock (_queue)
        {
            _closed = true;
            Monitor.PulseAll(_queue);
        }
    }

    private void Work()
    {
        while (true)
        {
            NbdRequest request;
            lock (_queue)
            {
                while (_queue.Count == 0)
                {
                    if (_closed)
                    {
                        _threads--;
                        SplicePipe.ReleaseThisThread();
                        return;
                    }
                    _idle++;
                    Monitor.Wait(_queue);
                    _idle--;
                }
                request = _queue.Dequeue();
            }
            // Execute never throws: ClientConnection.Execute catches everything.
            request.Execute();
        }
    }
}
